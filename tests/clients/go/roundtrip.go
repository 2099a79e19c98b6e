// Round trip with Go's github.com/rabbitmq/amqp091-go against an AMQP 0-9-1 broker (Leveret or RabbitMQ).
//
//	usage: roundtrip AMQP_URL NAME_PREFIX
//
// Built offline from Debian's golang-github-rabbitmq-amqp091-go-dev in GOPATH mode:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o roundtrip roundtrip.go
//
// Declares a topic exchange and a non-durable queue, binds them, publishes in confirm mode messages with
// properties, consumes them with manual acks and checks bodies and properties, then basic.get; then a
// mandatory return, basic.qos and a multi-frame message rejected and redelivered; and cleans up.
// Prints "go amqp091-go: OK ..." and exits 0, or prints the failure and exits 1.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const count = 3

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go amqp091-go: FAILED: "+format+"\n", args...)
	os.Exit(1)
}

func check(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func expect(actual, expected interface{}, what string) {
	if actual != expected {
		fail("%s: expected %#v, got %#v", what, expected, actual)
	}
}

func publishing(i int, prefix string) amqp.Publishing {
	return amqp.Publishing{
		ContentType:   "text/plain",
		Headers:       amqp.Table{"x-index": int32(i), "x-client": "amqp091-go", "x-flag": true},
		CorrelationId: fmt.Sprintf("corr-%d", i),
		ReplyTo:       prefix + ".replies",
		MessageId:     fmt.Sprintf("msg-%d", i),
		Body:          []byte(fmt.Sprintf("go message %d", i)),
	}
}

func checkDelivery(d amqp.Delivery, i int, prefix, what string) {
	expect(string(d.Body), fmt.Sprintf("go message %d", i), what+" body")
	expect(d.ContentType, "text/plain", what+" content_type")
	expect(d.CorrelationId, fmt.Sprintf("corr-%d", i), what+" correlation_id")
	expect(d.ReplyTo, prefix+".replies", what+" reply_to")
	expect(d.MessageId, fmt.Sprintf("msg-%d", i), what+" message_id")
	expect(d.Headers["x-index"], int32(i), what+" header x-index")
	expect(d.Headers["x-client"], "amqp091-go", what+" header x-client")
	expect(d.Headers["x-flag"], true, what+" header x-flag")
}

// extras: a server-named exclusive queue, a mandatory publish returned with basic.return, basic.qos, a
// multi-frame message rejected with requeue and redelivered, all in confirm mode.
func extras(ctx context.Context, ch *amqp.Channel, confirms chan amqp.Confirmation, prefix string) {
	waitConfirm := func(what string) {
		select {
		case c := <-confirms:
			expect(c.Ack, true, what+" confirm ack")
		case <-ctx.Done():
			fail("timed out waiting for the confirm of %s", what)
		}
	}
	named, err := ch.QueueDeclare("", false, true, true, false, nil)
	check(err, "queue.declare of a server-named queue")
	if len(named.Name) < 8 || named.Name[:8] != "amq.gen-" {
		fail("server-named queue: got %q", named.Name)
	}

	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	check(ch.PublishWithContext(ctx, "amq.direct", prefix+".nowhere", true, false,
		amqp.Publishing{MessageId: "returned-1", Body: []byte("back")}), "mandatory basic.publish")
	select {
	case r := <-returns:
		expect(r.ReplyCode, uint16(312), "basic.return reply code")
		expect(r.ReplyText, "NO_ROUTE", "basic.return reply text")
		expect(r.Exchange, "amq.direct", "basic.return exchange")
		expect(r.RoutingKey, prefix+".nowhere", "basic.return routing key")
		expect(r.MessageId, "returned-1", "basic.return message_id")
		expect(string(r.Body), "back", "basic.return body")
	case <-ctx.Done():
		fail("timed out waiting for basic.return")
	}
	waitConfirm("returned message")

	check(ch.Qos(1, 0, false), "basic.qos")
	big := make([]byte, 300*1024)
	for i := range big {
		big[i] = byte(i % 251)
	}
	check(ch.PublishWithContext(ctx, "", named.Name, false, false, amqp.Publishing{
		ContentType: "application/octet-stream", DeliveryMode: amqp.Persistent, Priority: 3, Expiration: "60000",
		Timestamp: time.Unix(1700000000, 0), Type: "blob", AppId: "roundtrip.go", UserId: "guest",
		Headers: amqp.Table{"nested": amqp.Table{"n": int64(-7), "list": []interface{}{"a", int32(2)}}},
		Body:    big,
	}), "basic.publish of a large message")
	waitConfirm("large message")
	deliveries, err := ch.Consume(named.Name, "", false, true, false, false, nil)
	check(err, "basic.consume on the server-named queue")
	for attempt := 0; attempt < 2; attempt++ {
		select {
		case d := <-deliveries:
			expect(len(d.Body), len(big), "large body length")
			expect(string(d.Body) == string(big), true, "large body bytes")
			expect(d.Redelivered, attempt == 1, "large message redelivered flag")
			expect(d.Priority, uint8(3), "priority")
			expect(d.DeliveryMode, amqp.Persistent, "delivery_mode")
			expect(d.Timestamp.Unix(), int64(1700000000), "timestamp")
			expect(d.UserId, "guest", "user_id")
			nested, ok := d.Headers["nested"].(amqp.Table)
			if !ok || nested["n"] != int64(-7) {
				fail("nested header table: got %#v", d.Headers["nested"])
			}
			if attempt == 0 {
				check(d.Reject(true), "basic.reject with requeue")
			} else {
				check(d.Ack(false), "basic.ack of the redelivered message")
			}
		case <-ctx.Done():
			fail("timed out waiting for the large message (attempt %d)", attempt)
		}
	}
	deleted, err := ch.QueueDelete(named.Name, false, false, false)
	check(err, "queue.delete of the server-named queue")
	expect(deleted, 0, "server-named queue messages at delete")
}

// deferredConfirmation checks that DeferredConfirmation.Wait reports the broker's ack. This amqp091-go (Debian's)
// registers a deferred confirmation only after it sent the publish, so an ack that arrives in between resolves the
// NotifyPublish stream but never the deferred confirmation, whose Wait then returns false when its context ends
// (seen on a loaded machine). So: a publish (unroutable, acked all the same) with a bounded context, again if that
// race lost it; a nack fails at once on the stream, and no resolved one in five fails.
func deferredConfirmation(ctx context.Context, ch *amqp.Channel, confirms chan amqp.Confirmation, exchange string) {
	for attempt := 1; attempt <= 5; attempt++ {
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		dc, err := ch.PublishWithDeferredConfirmWithContext(dctx, exchange, "deferred.unbound", false, false,
			amqp.Publishing{Body: []byte("deferred")})
		check(err, "basic.publish with a deferred confirmation")
		select {
		case c := <-confirms:
			expect(c.Ack, true, "confirm ack of the deferred-confirmation publish")
			expect(c.DeliveryTag, dc.DeliveryTag, "confirm delivery tag of the deferred-confirmation publish")
		case <-ctx.Done():
			fail("timed out waiting for the confirm of the deferred-confirmation publish")
		}
		acked := dc.Wait()
		dcancel()
		if acked {
			return
		}
	}
	fail("deferred confirmation: none of five resolved with an ack")
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: roundtrip AMQP_URL NAME_PREFIX")
		os.Exit(2)
	}
	url, prefix := os.Args[1], os.Args[2]
	exchange, queue := prefix+".go.topic", prefix+".go.q"
	time.AfterFunc(25*time.Second, func() { fail("timed out") })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	conn, err := amqp.Dial(url)
	check(err, "dial")
	ch, err := conn.Channel()
	check(err, "channel.open")

	check(ch.ExchangeDeclare(exchange, "topic", false, false, false, false, nil), "exchange.declare")
	q, err := ch.QueueDeclare(queue, false, false, false, false, nil)
	check(err, "queue.declare")
	expect(q.Name, queue, "queue.declare-ok queue")
	expect(q.Messages, 0, "queue.declare-ok message_count")
	check(ch.QueueBind(queue, "orders.*", exchange, false, nil), "queue.bind")

	// Publisher confirms: a deferred confirmation per message and the NotifyPublish stream.
	check(ch.Confirm(false), "confirm.select")
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, count+1))
	for i := 0; i < count; i++ {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, fmt.Sprintf("orders.%d", i), false,
			false, publishing(i, prefix))
		check(err, "basic.publish")
		expect(dc.DeliveryTag, uint64(i+1), "deferred confirm delivery tag")
	}
	for i := 0; i < count; i++ {
		select {
		case c := <-confirms:
			expect(c.Ack, true, fmt.Sprintf("confirm %d ack", c.DeliveryTag))
			expect(c.DeliveryTag, uint64(i+1), "confirm delivery tag order")
		case <-ctx.Done():
			fail("timed out waiting for publisher confirm %d", i+1)
		}
	}

	// Consume with manual acks.
	deliveries, err := ch.Consume(queue, "go-consumer", false, false, false, false, nil)
	check(err, "basic.consume")
	for i := 0; i < count; i++ {
		select {
		case d, ok := <-deliveries:
			if !ok {
				fail("delivery channel closed after %d messages", i)
			}
			what := fmt.Sprintf("delivery %d", i)
			checkDelivery(d, i, prefix, what)
			expect(d.Exchange, exchange, what+" exchange")
			expect(d.RoutingKey, fmt.Sprintf("orders.%d", i), what+" routing key")
			expect(d.Redelivered, false, what+" redelivered")
			expect(d.ConsumerTag, "go-consumer", what+" consumer tag")
			check(d.Ack(false), "basic.ack")
		case <-ctx.Done():
			fail("timed out waiting for delivery %d", i)
		}
	}
	check(ch.Cancel("go-consumer", false), "basic.cancel")

	// basic.get of one more message, then an empty queue.
	_, err = ch.PublishWithDeferredConfirmWithContext(ctx, exchange, "orders.get", false, false,
		publishing(count, prefix))
	check(err, "basic.publish")
	select {
	case c := <-confirms:
		expect(c.Ack, true, "confirm ack for basic.get message")
	case <-ctx.Done():
		fail("timed out waiting for the last publisher confirm")
	}
	deferredConfirmation(ctx, ch, confirms, exchange)
	got, ok, err := ch.Get(queue, false)
	check(err, "basic.get")
	if !ok {
		fail("basic.get returned empty, expected a message")
	}
	checkDelivery(got, count, prefix, "basic.get")
	expect(got.MessageCount, uint32(0), "basic.get-ok message_count")
	check(got.Ack(false), "basic.ack after basic.get")
	_, ok, err = ch.Get(queue, false)
	check(err, "second basic.get")
	expect(ok, false, "second basic.get should be empty")

	extras(ctx, ch, confirms, prefix)

	inspected, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
	check(err, "queue.declare passive")
	expect(inspected.Messages, 0, "messages left after acks")
	check(ch.QueueUnbind(queue, "orders.*", exchange, nil), "queue.unbind")
	purged, err := ch.QueueDelete(queue, false, false, false)
	check(err, "queue.delete")
	expect(purged, 0, "queue.delete-ok message_count")
	check(ch.ExchangeDelete(exchange, false, false), "exchange.delete")
	check(ch.Close(), "channel.close")
	check(conn.Close(), "connection.close")
	fmt.Printf("go amqp091-go: OK (%d confirmed, consumed and acked with properties, basic.get, basic.return, "+
		"300 KiB message, reject/requeue)\n", count)
}
