<?php
// Round trip with php-amqplib (Debian's php-amqplib) against an AMQP 0-9-1 broker (Leveret or RabbitMQ).
// usage: php roundtrip.php HOST PORT NAME_PREFIX
// Declares a direct exchange and a non-durable queue, binds them, publishes with publisher confirms
// (confirm_select + wait_for_pending_acks) messages with properties and one JSON task message, consumes
// them with manual acks and checks bodies and properties, then basic.get, a mandatory return and a
// reject/requeue under basic.qos, and cleans up.
// Prints "php php-amqplib: OK ..." and exits 0, or prints the failure and exits 1.

declare(strict_types=1);

$autoload = getenv('PHP_AMQPLIB_AUTOLOAD') ?: '/usr/share/php/PhpAmqpLib/autoload.php';
require_once $autoload;

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;

const COUNT = 3;

function fail(string $why): void
{
    fwrite(STDERR, "php php-amqplib: FAILED: $why\n");
    exit(1);
}

function expect($actual, $expected, string $what): void
{
    if ($actual !== $expected) {
        fail("$what: expected " . var_export($expected, true) . ', got ' . var_export($actual, true));
    }
}

if ($argc < 4) {
    fwrite(STDERR, "usage: php roundtrip.php HOST PORT NAME_PREFIX\n");
    exit(2);
}
[, $host, $port, $prefix] = $argv;
$exchange = "$prefix.php.direct";
$queue = "$prefix.php.q";
$routingKey = 'tasks';

$task = [
    'payload' => ['to' => 'user@example.com', 'subject' => 'Welcome', 'attempt' => 1],
    'metadata' => ['className' => 'SendEmail'],
];

function checkMessage(AMQPMessage $msg, int $i, string $prefix, string $what): void
{
    expect($msg->getBody(), "php message $i", "$what body");
    expect($msg->get('content_type'), 'text/plain', "$what content_type");
    expect($msg->get('correlation_id'), "corr-$i", "$what correlation_id");
    expect($msg->get('reply_to'), "$prefix.replies", "$what reply_to");
    expect($msg->get('message_id'), "msg-$i", "$what message_id");
    $headers = $msg->get('application_headers')->getNativeData();
    expect($headers['x-index'] ?? null, $i, "$what header x-index");
    expect($headers['x-client'] ?? null, 'php-amqplib', "$what header x-client");
    expect($headers['x-flag'] ?? null, true, "$what header x-flag");
}

function makeMessage(int $i, string $prefix): AMQPMessage
{
    return new AMQPMessage("php message $i", [
        'content_type' => 'text/plain',
        'correlation_id' => "corr-$i",
        'reply_to' => "$prefix.replies",
        'message_id' => "msg-$i",
        'application_headers' => new AMQPTable(['x-index' => $i, 'x-client' => 'php-amqplib', 'x-flag' => true]),
    ]);
}

try {
    $connection = new AMQPStreamConnection($host, (int) $port, 'guest', 'guest', '/', false, 'AMQPLAIN', null,
        'en_US', 10.0, 10.0);
    $channel = $connection->channel();

    $channel->exchange_declare($exchange, 'direct', false, false, false);
    [$declaredQueue, $messageCount] = $channel->queue_declare($queue, false, false, false, false);
    expect($declaredQueue, $queue, 'queue.declare-ok queue');
    expect($messageCount, 0, 'queue.declare-ok message_count');
    $channel->queue_bind($queue, $exchange, $routingKey);

    // Publisher confirms.
    $acked = 0;
    $nacked = 0;
    $channel->set_ack_handler(function (AMQPMessage $m) use (&$acked) { $acked++; });
    $channel->set_nack_handler(function (AMQPMessage $m) use (&$nacked) { $nacked++; });
    $channel->confirm_select();
    for ($i = 0; $i < COUNT; $i++) {
        $channel->basic_publish(makeMessage($i, $prefix), $exchange, $routingKey);
    }
    // The JSON task message, published as an ordinary message.
    $channel->basic_publish(new AMQPMessage(json_encode($task), [
        'content_type' => 'application/json',
        'message_id' => 'task-1',
        'correlation_id' => 'task-corr-1',
        'reply_to' => "$prefix.replies",
        'application_headers' => new AMQPTable(['x-client' => 'php-amqplib']),
    ]), $exchange, $routingKey);
    $channel->wait_for_pending_acks(10.0);
    expect($acked, COUNT + 1, 'publisher confirms acked');
    expect($nacked, 0, 'publisher confirms nacked');

    // Consume with manual acks.
    $received = [];
    $consumerTag = $channel->basic_consume($queue, '', false, false, false, false,
        function (AMQPMessage $msg) use (&$received) {
            $received[] = $msg;
            $msg->ack();
        });
    $deadline = microtime(true) + 10;
    while (count($received) < COUNT + 1) {
        if (microtime(true) > $deadline) {
            fail('timed out waiting for deliveries, got ' . count($received));
        }
        $channel->wait(null, false, 5.0);
    }
    $channel->basic_cancel($consumerTag);
    for ($i = 0; $i < COUNT; $i++) {
        checkMessage($received[$i], $i, $prefix, "delivery $i");
        expect($received[$i]->getExchange(), $exchange, "delivery $i exchange");
        expect($received[$i]->getRoutingKey(), $routingKey, "delivery $i routing key");
        expect($received[$i]->isRedelivered(), false, "delivery $i redelivered");
    }
    $taskMsg = $received[COUNT];
    expect($taskMsg->get('content_type'), 'application/json', 'task content_type');
    expect($taskMsg->get('message_id'), 'task-1', 'task message_id');
    expect(json_decode($taskMsg->getBody(), true), $task, 'task body');
    expect(json_decode($taskMsg->getBody(), true)['metadata']['className'], 'SendEmail', 'task className');

    // basic.get of one more message, then an empty queue.
    $channel->basic_publish(makeMessage(COUNT, $prefix), $exchange, $routingKey);
    $channel->wait_for_pending_acks(10.0);
    expect($acked, COUNT + 2, 'publisher confirms acked after basic.get publish');
    $got = $channel->basic_get($queue, false);
    if ($got === null) {
        fail('basic.get returned empty, expected a message');
    }
    checkMessage($got, COUNT, $prefix, 'basic.get');
    expect($got->getMessageCount(), 0, 'basic.get-ok message_count');
    $got->ack();
    expect($channel->basic_get($queue, false), null, 'second basic.get');

    // A mandatory publish that comes back with basic.return, then basic.qos and basic.reject with requeue.
    $returns = [];
    $channel->set_return_listener(
        function ($replyCode, $replyText, $exchange, $routingKey, AMQPMessage $msg) use (&$returns) {
            $returns[] = [$replyCode, $replyText, $exchange, $routingKey, $msg->getBody(), $msg->get('message_id')];
        });
    $channel->basic_publish(new AMQPMessage('back', ['message_id' => 'returned-1']), 'amq.direct',
        "$prefix.nowhere", true);
    $channel->wait_for_pending_acks_returns(10.0);
    expect($returns, [[312, 'NO_ROUTE', 'amq.direct', "$prefix.nowhere", 'back', 'returned-1']], 'basic.return');
    expect($acked, COUNT + 3, 'publisher confirm of the returned message');

    $channel->basic_qos(0, 1, false);
    $channel->basic_publish(makeMessage(COUNT + 1, $prefix), $exchange, $routingKey);
    $channel->wait_for_pending_acks(10.0);
    $deliveries = [];
    $tag = $channel->basic_consume($queue, '', false, false, false, false,
        function (AMQPMessage $msg) use (&$deliveries) {
            $deliveries[] = $msg;
            if (count($deliveries) === 1) {
                $msg->reject(true);
            } else {
                $msg->ack();
            }
        });
    $deadline = microtime(true) + 10;
    while (count($deliveries) < 2) {
        if (microtime(true) > $deadline) {
            fail('timed out waiting for the rejected message to come back');
        }
        $channel->wait(null, false, 5.0);
    }
    $channel->basic_cancel($tag);
    checkMessage($deliveries[0], COUNT + 1, $prefix, 'first delivery before reject');
    expect($deliveries[0]->isRedelivered(), false, 'first delivery redelivered flag');
    checkMessage($deliveries[1], COUNT + 1, $prefix, 'redelivery after reject');
    expect($deliveries[1]->isRedelivered(), true, 'redelivery redelivered flag');

    $channel->queue_unbind($queue, $exchange, $routingKey);
    [, $left] = $channel->queue_declare($queue, true);
    expect($left, 0, 'messages left after acks');
    $channel->queue_delete($queue);
    $channel->exchange_delete($exchange);
    $channel->close();
    $connection->close();
} catch (Throwable $e) {
    fail(get_class($e) . ': ' . $e->getMessage());
}

echo 'php php-amqplib: OK (' . COUNT . ' + 1 JSON task confirmed, consumed and acked with properties, basic.get, '
    . "basic.return, reject/requeue)\n";
exit(0);
