/* Round trip with rabbitmq-c (Debian's librabbitmq-dev) against an AMQP 0-9-1 broker (Leveret or RabbitMQ).
 *
 *   usage: roundtrip HOST PORT NAME_PREFIX
 *   build: cc -o roundtrip roundtrip.c -lrabbitmq
 *
 * Declares a direct exchange and a non-durable queue, binds them, publishes in confirm mode messages with
 * properties (waiting for each basic.ack), consumes them with manual acks and checks bodies and properties,
 * then basic.get, and cleans up. Prints "c rabbitmq-c: OK ..." and exits 0, or the failure and exits 1.
 */
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define COUNT 3
#define CH 1

static amqp_connection_state_t conn;

static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "c rabbitmq-c: FAILED: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

static void check_reply(amqp_rpc_reply_t r, const char *what) {
  switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
      return;
    case AMQP_RESPONSE_NONE:
      fail("%s: missing RPC reply", what);
      break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      fail("%s: %s", what, amqp_error_string2(r.library_error));
      break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_t *m = r.reply.decoded;
        fail("%s: connection closed by server: %u %.*s", what, m->reply_code, (int)m->reply_text.len,
             (char *)m->reply_text.bytes);
      } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t *m = r.reply.decoded;
        fail("%s: channel closed by server: %u %.*s", what, m->reply_code, (int)m->reply_text.len,
             (char *)m->reply_text.bytes);
      }
      fail("%s: unexpected server method 0x%08X", what, r.reply.id);
      break;
  }
}

static void check_rpc(const char *what) { check_reply(amqp_get_rpc_reply(conn), what); }

static int bytes_eq(amqp_bytes_t b, const char *s) {
  return b.len == strlen(s) && memcmp(b.bytes, s, b.len) == 0;
}

static void expect_bytes(amqp_flags_t flags, amqp_flags_t flag, amqp_bytes_t b, const char *want, const char *what) {
  if (!(flags & flag)) fail("%s: property missing (expected '%s')", what, want);
  if (!bytes_eq(b, want)) fail("%s: expected '%s', got '%.*s'", what, want, (int)b.len, (char *)b.bytes);
}

static amqp_table_entry_t *find_header(amqp_table_t *t, const char *key) {
  for (int i = 0; i < t->num_entries; i++)
    if (bytes_eq(t->entries[i].key, key)) return &t->entries[i];
  return NULL;
}

static void check_message(amqp_basic_properties_t *p, amqp_bytes_t body, int i, const char *prefix,
                          const char *what) {
  char want[256], label[128];
  snprintf(want, sizeof want, "c message %d", i);
  if (!bytes_eq(body, want))
    fail("%s body: expected '%s', got '%.*s'", what, want, (int)body.len, (char *)body.bytes);
  snprintf(label, sizeof label, "%s content_type", what);
  expect_bytes(p->_flags, AMQP_BASIC_CONTENT_TYPE_FLAG, p->content_type, "text/plain", label);
  snprintf(want, sizeof want, "corr-%d", i);
  snprintf(label, sizeof label, "%s correlation_id", what);
  expect_bytes(p->_flags, AMQP_BASIC_CORRELATION_ID_FLAG, p->correlation_id, want, label);
  snprintf(want, sizeof want, "%s.replies", prefix);
  snprintf(label, sizeof label, "%s reply_to", what);
  expect_bytes(p->_flags, AMQP_BASIC_REPLY_TO_FLAG, p->reply_to, want, label);
  snprintf(want, sizeof want, "msg-%d", i);
  snprintf(label, sizeof label, "%s message_id", what);
  expect_bytes(p->_flags, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id, want, label);
  if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG)) fail("%s: headers missing", what);
  amqp_table_entry_t *e = find_header(&p->headers, "x-index");
  if (!e || e->value.kind != AMQP_FIELD_KIND_I32 || e->value.value.i32 != i)
    fail("%s: header x-index should be I32 %d", what, i);
  e = find_header(&p->headers, "x-client");
  if (!e || e->value.kind != AMQP_FIELD_KIND_UTF8 || !bytes_eq(e->value.value.bytes, "rabbitmq-c"))
    fail("%s: header x-client should be 'rabbitmq-c'", what);
  e = find_header(&p->headers, "x-flag");
  if (!e || e->value.kind != AMQP_FIELD_KIND_BOOLEAN || !e->value.value.boolean)
    fail("%s: header x-flag should be true", what);
}

/* Publishes message i and waits for its publisher confirm (basic.ack with delivery tag `tag`). */
static void publish_confirmed(const char *exchange, const char *routing_key, int i, const char *prefix,
                              uint64_t tag) {
  char body[64], corr[64], reply_to[256], msg_id[64];
  snprintf(body, sizeof body, "c message %d", i);
  snprintf(corr, sizeof corr, "corr-%d", i);
  snprintf(reply_to, sizeof reply_to, "%s.replies", prefix);
  snprintf(msg_id, sizeof msg_id, "msg-%d", i);

  amqp_table_entry_t entries[3];
  entries[0].key = amqp_cstring_bytes("x-index");
  entries[0].value.kind = AMQP_FIELD_KIND_I32;
  entries[0].value.value.i32 = i;
  entries[1].key = amqp_cstring_bytes("x-client");
  entries[1].value.kind = AMQP_FIELD_KIND_UTF8;
  entries[1].value.value.bytes = amqp_cstring_bytes("rabbitmq-c");
  entries[2].key = amqp_cstring_bytes("x-flag");
  entries[2].value.kind = AMQP_FIELD_KIND_BOOLEAN;
  entries[2].value.value.boolean = 1;

  amqp_basic_properties_t props;
  memset(&props, 0, sizeof props);
  props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
                 AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
  props.content_type = amqp_cstring_bytes("text/plain");
  props.headers.num_entries = 3;
  props.headers.entries = entries;
  props.correlation_id = amqp_cstring_bytes(corr);
  props.reply_to = amqp_cstring_bytes(reply_to);
  props.message_id = amqp_cstring_bytes(msg_id);

  int rc = amqp_basic_publish(conn, CH, amqp_cstring_bytes(exchange), amqp_cstring_bytes(routing_key), 0, 0,
                              &props, amqp_cstring_bytes(body));
  if (rc != AMQP_STATUS_OK) fail("basic.publish %d: %s", i, amqp_error_string2(rc));

  amqp_frame_t frame;
  struct timeval timeout = {10, 0};
  rc = amqp_simple_wait_frame_noblock(conn, &frame, &timeout);
  if (rc != AMQP_STATUS_OK) fail("waiting for the confirm of message %d: %s", i, amqp_error_string2(rc));
  if (frame.frame_type != AMQP_FRAME_METHOD || frame.channel != CH)
    fail("waiting for the confirm of message %d: unexpected frame type %d on channel %d", i, frame.frame_type,
         frame.channel);
  if (frame.payload.method.id == AMQP_BASIC_NACK_METHOD) fail("message %d was nacked", i);
  if (frame.payload.method.id != AMQP_BASIC_ACK_METHOD)
    fail("waiting for the confirm of message %d: got method 0x%08X", i, frame.payload.method.id);
  amqp_basic_ack_t *ack = frame.payload.method.decoded;
  if (ack->delivery_tag != tag || ack->multiple)
    fail("confirm of message %d: delivery_tag %llu multiple %d, expected %llu", i,
         (unsigned long long)ack->delivery_tag, ack->multiple, (unsigned long long)tag);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s HOST PORT NAME_PREFIX\n", argv[0]);
    return 2;
  }
  const char *host = argv[1], *prefix = argv[3];
  int port = atoi(argv[2]);
  char exchange[256], queue[256];
  snprintf(exchange, sizeof exchange, "%s.c.direct", prefix);
  snprintf(queue, sizeof queue, "%s.c.q", prefix);
  const char *routing_key = "jobs";

  conn = amqp_new_connection();
  amqp_socket_t *socket = amqp_tcp_socket_new(conn);
  if (!socket) fail("creating the TCP socket");
  struct timeval connect_timeout = {10, 0};
  int rc = amqp_socket_open_noblock(socket, host, port, &connect_timeout);
  if (rc != AMQP_STATUS_OK) fail("connecting to %s:%d: %s", host, port, amqp_error_string2(rc));
  check_reply(amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest"), "login");
  amqp_channel_open(conn, CH);
  check_rpc("channel.open");

  amqp_exchange_declare(conn, CH, amqp_cstring_bytes(exchange), amqp_cstring_bytes("direct"), 0, 0, 0, 0,
                        amqp_empty_table);
  check_rpc("exchange.declare");
  amqp_queue_declare_ok_t *declared =
      amqp_queue_declare(conn, CH, amqp_cstring_bytes(queue), 0, 0, 0, 0, amqp_empty_table);
  check_rpc("queue.declare");
  if (!bytes_eq(declared->queue, queue) || declared->message_count != 0)
    fail("queue.declare-ok: queue '%.*s' with %u messages", (int)declared->queue.len,
         (char *)declared->queue.bytes, declared->message_count);
  amqp_queue_bind(conn, CH, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                  amqp_cstring_bytes(routing_key), amqp_empty_table);
  check_rpc("queue.bind");

  amqp_confirm_select(conn, CH);
  check_rpc("confirm.select");
  for (int i = 0; i < COUNT; i++) publish_confirmed(exchange, routing_key, i, prefix, (uint64_t)i + 1);

  /* Consume with manual acks. */
  amqp_basic_consume_ok_t *consume_ok = amqp_basic_consume(conn, CH, amqp_cstring_bytes(queue),
                                                           amqp_cstring_bytes("c-consumer"), 0, 0, 0,
                                                           amqp_empty_table);
  check_rpc("basic.consume");
  if (!bytes_eq(consume_ok->consumer_tag, "c-consumer")) fail("basic.consume-ok: wrong consumer tag");
  for (int i = 0; i < COUNT; i++) {
    amqp_envelope_t env;
    struct timeval timeout = {10, 0};
    amqp_maybe_release_buffers(conn);
    check_reply(amqp_consume_message(conn, &env, &timeout, 0), "waiting for a delivery");
    char what[64];
    snprintf(what, sizeof what, "delivery %d", i);
    check_message(&env.message.properties, env.message.body, i, prefix, what);
    if (!bytes_eq(env.exchange, exchange) || !bytes_eq(env.routing_key, routing_key) || env.redelivered ||
        !bytes_eq(env.consumer_tag, "c-consumer"))
      fail("%s: wrong exchange, routing key, redelivered flag or consumer tag", what);
    if (amqp_basic_ack(conn, CH, env.delivery_tag, 0) != AMQP_STATUS_OK) fail("basic.ack %d", i);
    amqp_destroy_envelope(&env);
  }
  amqp_basic_cancel(conn, CH, amqp_cstring_bytes("c-consumer"));
  check_rpc("basic.cancel");

  /* basic.get of one more message, then an empty queue. */
  publish_confirmed(exchange, routing_key, COUNT, prefix, COUNT + 1);
  amqp_rpc_reply_t r = amqp_basic_get(conn, CH, amqp_cstring_bytes(queue), 0);
  check_reply(r, "basic.get");
  if (r.reply.id != AMQP_BASIC_GET_OK_METHOD) fail("basic.get returned empty, expected a message");
  amqp_basic_get_ok_t *get_ok = r.reply.decoded;
  uint64_t get_tag = get_ok->delivery_tag;
  if (get_ok->message_count != 0) fail("basic.get-ok message_count %u, expected 0", get_ok->message_count);
  amqp_message_t message;
  check_reply(amqp_read_message(conn, CH, &message, 0), "reading the basic.get message");
  check_message(&message.properties, message.body, COUNT, prefix, "basic.get");
  amqp_destroy_message(&message);
  if (amqp_basic_ack(conn, CH, get_tag, 0) != AMQP_STATUS_OK) fail("basic.ack after basic.get");
  r = amqp_basic_get(conn, CH, amqp_cstring_bytes(queue), 0);
  check_reply(r, "second basic.get");
  if (r.reply.id != AMQP_BASIC_GET_EMPTY_METHOD) fail("second basic.get should be empty");

  amqp_queue_unbind(conn, CH, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes(routing_key), amqp_empty_table);
  check_rpc("queue.unbind");
  amqp_queue_delete_ok_t *deleted = amqp_queue_delete(conn, CH, amqp_cstring_bytes(queue), 0, 0);
  check_rpc("queue.delete");
  if (deleted->message_count != 0) fail("queue.delete-ok: %u messages left", deleted->message_count);
  amqp_exchange_delete(conn, CH, amqp_cstring_bytes(exchange), 0);
  check_rpc("exchange.delete");
  check_reply(amqp_channel_close(conn, CH, AMQP_REPLY_SUCCESS), "channel.close");
  check_reply(amqp_connection_close(conn, AMQP_REPLY_SUCCESS), "connection.close");
  if (amqp_destroy_connection(conn) != AMQP_STATUS_OK) fail("destroying the connection");
  printf("c rabbitmq-c: OK (%d confirmed, consumed and acked with properties, 1 basic.get)\n", COUNT);
  return 0;
}
