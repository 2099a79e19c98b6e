// Round trip with Go's github.com/rabbitmq/amqp091-go against an AMQP 0-9-1 broker (Leveret or RabbitMQ).
//
//	usage: roundtrip AMQP_URL NAME_PREFIX
//
// Built offline from Debian's golang-github-rabbitmq-amqp091-go-dev in GOPATH mode:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o roundtrip roundtrip.go
//
// Declares a topic exchange and a non-durable queue, binds them, publishes in confirm mode messages with
// properties, consumes them with manual acks and checks bodies and properties, then basic.get, and cleans up.
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
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, "orders.get", false, false,
		publishing(count, prefix))
	check(err, "basic.publish")
	select {
	case c := <-confirms:
		expect(c.Ack, true, "confirm ack for basic.get message")
	case <-ctx.Done():
		fail("timed out waiting for the last publisher confirm")
	}
	expect(dc.Wait(), true, "deferred confirmation")
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
	fmt.Printf("go amqp091-go: OK (%d confirmed, consumed and acked with properties, 1 basic.get)\n", count)
}
