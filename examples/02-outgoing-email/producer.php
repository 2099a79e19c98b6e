<?php
// php producer.php TO SUBJECT BODY [FROM]: queue one e-mail for the mail worker (worker.py), print its task id.
// The broker is $LEVERET_URL (default amqp://guest:guest@127.0.0.1:5672/).
require_once '/usr/share/php/PhpAmqpLib/autoload.php';  // Debian's php-amqplib; or Composer's vendor/autoload.php

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Exception\AMQPProtocolChannelException;
use PhpAmqpLib\Message\AMQPMessage;

$url = parse_url(getenv('LEVERET_URL') ?: 'amqp://guest:guest@127.0.0.1:5672/');
$vhost = (isset($url['path']) && $url['path'] !== '/') ? rawurldecode(substr($url['path'], 1)) : '/';
[, $to, $subject, $body] = $argv;
$from = $argv[4] ?? 'alice@example.com';

$connection = new AMQPStreamConnection($url['host'], $url['port'] ?? 5672, rawurldecode($url['user'] ?? 'guest'),
                                       rawurldecode($url['pass'] ?? 'guest'), $vhost);
$channel = $connection->channel();
try {
    // The worker declares the queue with its arguments; a message sent to a missing queue would be dropped.
    $channel->queue_declare('outgoing-email', true);  // passive: only check that it exists
} catch (AMQPProtocolChannelException $e) {
    fwrite(STDERR, "the queue outgoing-email does not exist: start worker.py first\n");
    exit(1);
}
$channel->confirm_select();
$id = bin2hex(random_bytes(16));
$message = new AMQPMessage(json_encode([
    'payload' => ['sender' => $from, 'to' => $to, 'subject' => $subject, 'body' => $body],
    // No 'retry' here: the worker applies the task's own schedule (MAIL_RETRY_INTERVALS).
    'metadata' => ['task' => 'mail.send', 'id' => $id, 'attempt' => 0, 'sent_at' => gmdate('c')],
]), [
    'content_type' => 'application/json',
    'delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT,
    'message_id' => $id,
]);
$channel->basic_publish($message, '', 'outgoing-email');
$channel->wait_for_pending_acks(5.0);  // returns once the broker has it
echo "queued ", $id, PHP_EOL;
$channel->close();
$connection->close();
