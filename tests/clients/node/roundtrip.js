// Round trip with Node's amqplib against an AMQP 0-9-1 broker (Leveret or RabbitMQ).
// usage: node roundtrip.js AMQP_URL NAME_PREFIX
// Declares a topic exchange and a non-durable queue, binds them, publishes on a confirm channel with
// properties, consumes with manual acks and checks every body and property, then basic.get; then a
// server-named queue, a mandatory return, a multi-frame message, nack/requeue and a channel error; cleans up.
// Prints "node amqplib: OK ..." and exits 0, or prints the failure and exits 1.
'use strict';

const assert = require('node:assert/strict');
const amqp = require('amqplib');

const [url, prefix] = process.argv.slice(2);
if (!url || !prefix) {
  console.error('usage: node roundtrip.js AMQP_URL NAME_PREFIX');
  process.exit(2);
}

const COUNT = 3;
const exchange = `${prefix}.node.topic`;
const queue = `${prefix}.node.q`;

const watchdog = setTimeout(() => {
  console.error('node amqplib: FAILED: timed out');
  process.exit(1);
}, 25000);

function expectProps(msg, i, what) {
  const p = msg.properties;
  assert.equal(msg.content.toString(), `node message ${i}`, `${what} body`);
  assert.equal(p.contentType, 'text/plain', `${what} content_type`);
  assert.equal(p.correlationId, `corr-${i}`, `${what} correlation_id`);
  assert.equal(p.replyTo, `${prefix}.replies`, `${what} reply_to`);
  assert.equal(p.messageId, `msg-${i}`, `${what} message_id`);
  assert.equal(p.headers['x-index'], i, `${what} header x-index`);
  assert.equal(p.headers['x-client'], 'amqplib', `${what} header x-client`);
  assert.equal(p.headers['x-flag'], true, `${what} header x-flag`);
}

function publish(ch, i) {
  return new Promise((resolve, reject) => {
    ch.publish(exchange, `orders.created.${i}`, Buffer.from(`node message ${i}`), {
      contentType: 'text/plain',
      headers: { 'x-index': i, 'x-client': 'amqplib', 'x-flag': true },
      correlationId: `corr-${i}`,
      replyTo: `${prefix}.replies`,
      messageId: `msg-${i}`,
    }, (err) => (err ? reject(new Error(`publish ${i} was nacked`)) : resolve()));
  });
}

// A server-named exclusive queue, a mandatory publish that comes back with basic.return, a message larger
// than one frame, a nack with requeue coming back redelivered, and a 404 channel error on a second channel
// that leaves the connection usable.
async function extras(conn, ch) {
  const { queue: named } = await ch.assertQueue('', { exclusive: true });
  assert.match(named, /^amq\.gen-/, 'server-named queue');

  const returned = new Promise((resolve) => ch.once('return', resolve));
  await new Promise((resolve, reject) => ch.publish('amq.direct', `${prefix}.nowhere`, Buffer.from('back'),
    { mandatory: true, messageId: 'returned-1' }, (err) => (err ? reject(err) : resolve())));
  const ret = await returned;
  assert.equal(ret.fields.replyCode, 312, 'basic.return reply code');
  assert.equal(ret.fields.replyText, 'NO_ROUTE');
  assert.equal(ret.fields.exchange, 'amq.direct');
  assert.equal(ret.fields.routingKey, `${prefix}.nowhere`);
  assert.equal(ret.properties.messageId, 'returned-1');
  assert.equal(ret.content.toString(), 'back');

  const big = Buffer.alloc(300 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = i % 251;
  const props = { contentType: 'application/octet-stream', contentEncoding: 'identity', deliveryMode: 2,
    priority: 3, expiration: '60000', timestamp: 1700000000, type: 'blob', appId: 'roundtrip.js',
    userId: 'guest', headers: { nested: { list: [1, 'two', true], n: -7 }, big: 2 ** 40, f: 1.5, nul: null } };
  await new Promise((resolve, reject) =>
    ch.sendToQueue(named, big, props, (err) => (err ? reject(err) : resolve())));
  const first = await ch.get(named, { noAck: false });
  assert.ok(first, 'basic.get of the large message returned empty');
  assert.ok(first.content.equals(big), 'large body differs');
  for (const key of Object.keys(props)) {
    assert.deepEqual(first.properties[key], props[key], `large message property ${key}`);
  }
  assert.equal(first.fields.redelivered, false);
  ch.nack(first, false, true);
  const again = await ch.get(named, { noAck: false });
  assert.ok(again, 'nacked message was not requeued');
  assert.equal(again.fields.redelivered, true, 'requeued message should be redelivered');
  assert.ok(again.content.equals(big));
  ch.ack(again);

  const ch2 = await conn.createChannel();
  const closed = new Promise((resolve) => ch2.once('close', resolve));
  ch2.on('error', () => {});
  await assert.rejects(ch2.checkQueue(`${prefix}.no-such-queue`), (err) => err.code === 404,
    'passive declare of a missing queue should fail with 404');
  await closed;
  await ch.checkQueue(named);  // the connection and the first channel are still usable
}

async function main() {
  const conn = await amqp.connect(url);
  const ch = await conn.createConfirmChannel();

  await ch.assertExchange(exchange, 'topic', { durable: false, autoDelete: false });
  const q = await ch.assertQueue(queue, { durable: false, exclusive: false, autoDelete: false });
  assert.equal(q.queue, queue);
  assert.equal(q.messageCount, 0);
  await ch.bindQueue(queue, exchange, 'orders.#');

  // Publish with confirms: each publish's callback and waitForConfirms must see the broker's ack.
  await Promise.all(Array.from({ length: COUNT }, (_, i) => publish(ch, i)));
  await ch.waitForConfirms();

  // Consume with manual acks.
  const seen = [];
  let consumerTag;
  await new Promise((resolve, reject) => {
    ch.consume(queue, (msg) => {
      try {
        assert.ok(msg, 'consumer was cancelled by the broker');
        const i = seen.length;
        expectProps(msg, i, `delivery ${i}`);
        assert.equal(msg.fields.exchange, exchange);
        assert.equal(msg.fields.routingKey, `orders.created.${i}`);
        assert.equal(msg.fields.redelivered, false);
        ch.ack(msg);
        seen.push(msg.content.toString());
        if (seen.length === COUNT) resolve();
      } catch (err) {
        reject(err);
      }
    }, { noAck: false }).then((ok) => { consumerTag = ok.consumerTag; }, reject);
  });
  await ch.cancel(consumerTag);

  // basic.get of one more message, then an empty queue.
  await publish(ch, COUNT);
  await ch.waitForConfirms();
  const got = await ch.get(queue, { noAck: false });
  assert.ok(got, 'basic.get returned empty, expected a message');
  expectProps(got, COUNT, 'basic.get');
  assert.equal(got.fields.messageCount, 0);
  ch.ack(got);
  assert.equal(await ch.get(queue, { noAck: false }), false, 'second basic.get should be empty');

  const check = await ch.checkQueue(queue);
  assert.equal(check.messageCount, 0, 'queue should be empty after acks');

  await extras(conn, ch);

  await ch.unbindQueue(queue, exchange, 'orders.#');
  const deleted = await ch.deleteQueue(queue);
  assert.equal(deleted.messageCount, 0);
  await ch.deleteExchange(exchange);
  await ch.close();
  await conn.close();
  clearTimeout(watchdog);
  console.log(`node amqplib: OK (${COUNT} confirmed, consumed and acked with properties, basic.get, basic.return, `
    + '300 KiB message, nack/requeue, 404 channel error)');
}

main().catch((err) => {
  console.error(`node amqplib: FAILED: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
