<?php
// PHP's STOMP client (the pecl stomp extension, Debian's php-stomp) against a STOMP listener (Leveret's or
// RabbitMQ's plugin). The AMQP side of each exchange is pika, in tests/differential/test_stomp_clients.py.
// usage: php stomp_roundtrip.php produce|consume HOST PORT NAME_PREFIX
//   produce: SENDs 3 messages with properties and custom headers to /queue/PREFIX.to-amqp, each with a receipt
//            (send() returns only when the broker's RECEIPT came), then one transaction (BEGIN, SEND, COMMIT).
//   consume: SUBSCRIBEs to /amq/queue/PREFIX.to-php (declared by pika) with ack:client-individual and
//            prefetch-count 10, reads the 3 messages pika published, checks bodies and the headers their AMQP
//            properties became, ACKs the 1st and the 3rd only (each with a receipt) and disconnects: the 2nd must
//            go back to the queue (pika checks it comes back redelivered).
// Prints "php stomp: OK ..." and exits 0, or prints the failure and exits 1.

declare(strict_types=1);

const COUNT = 3;

function fail(string $why): void
{
    fwrite(STDERR, "php stomp: FAILED: $why\n");
    exit(1);
}

function expect($actual, $expected, string $what): void
{
    if ($actual !== $expected) {
        fail("$what: expected " . var_export($expected, true) . ', got ' . var_export($actual, true));
    }
}

if ($argc < 5 || !in_array($argv[1], ['produce', 'consume'], true)) {
    fwrite(STDERR, "usage: php stomp_roundtrip.php produce|consume HOST PORT NAME_PREFIX\n");
    exit(2);
}
if (!class_exists('Stomp')) {
    fail('the stomp extension is not loaded (Debian package php-stomp)');
}
[, $mode, $host, $port, $prefix] = $argv;

try {
    $stomp = new Stomp("tcp://$host:$port", 'guest', 'guest', ['accept-version' => '1.2', 'host' => '/']);
    $stomp->setReadTimeout(10);
    $session = $stomp->getSessionId();
    if (!is_string($session) || $session === '') {
        fail('no session id in CONNECTED');
    }

    if ($mode === 'produce') {
        for ($i = 0; $i < COUNT; $i++) {
            $ok = $stomp->send("/queue/$prefix.to-amqp", "php stomp message $i", [
                'receipt' => "php-receipt-$i",
                'content-type' => 'text/plain',
                'correlation-id' => "corr-$i",
                'reply-to' => "/queue/$prefix.replies",
                'amqp-message-id' => "msg-$i",
                'persistent' => 'true',
                'priority' => (string) ($i + 1),
                'type' => 'php.test',
                'app-id' => 'php-stomp',
                'x-index' => (string) $i,
                'x-client' => 'php stomp',
            ]);
            expect($ok, true, "send $i with a receipt");
        }
        expect($stomp->begin('php-tx', ['receipt' => 'php-begin']), true, 'BEGIN');
        expect($stomp->send("/queue/$prefix.to-amqp", 'php stomp in a transaction', [
            'transaction' => 'php-tx', 'x-client' => 'php stomp', 'persistent' => 'true']), true, 'SEND in tx');
        expect($stomp->commit('php-tx', ['receipt' => 'php-commit']), true, 'COMMIT');
        unset($stomp);  // DISCONNECT
        echo 'php stomp: OK (produce: ' . COUNT . " sends with receipts, 1 committed transaction)\n";
        exit(0);
    }

    // consume
    $destination = "/amq/queue/$prefix.to-php";
    expect($stomp->subscribe($destination, ['id' => 'php-sub', 'ack' => 'client-individual',
        'prefetch-count' => '10', 'receipt' => 'php-subscribed']), true, 'SUBSCRIBE with a receipt');
    $frames = [];
    $deadline = microtime(true) + 20;
    while (count($frames) < COUNT) {
        if (microtime(true) > $deadline) {
            fail('timed out waiting for MESSAGE frames, got ' . count($frames));
        }
        if (!$stomp->hasFrame()) {
            continue;
        }
        $frame = $stomp->readFrame();
        if ($frame === false || $frame === null) {
            continue;
        }
        expect($frame->command, 'MESSAGE', 'frame command');
        $frames[] = $frame;
    }
    for ($i = 0; $i < COUNT; $i++) {
        $h = $frames[$i]->headers;
        $what = "message $i";
        expect($frames[$i]->body, "amqp message $i", "$what body");
        expect($h['subscription'] ?? null, 'php-sub', "$what subscription");
        expect($h['destination'] ?? null, "/queue/$prefix.to-php", "$what destination");
        expect($h['redelivered'] ?? null, 'false', "$what redelivered");
        expect($h['content-type'] ?? null, 'application/json', "$what content-type");
        expect($h['correlation-id'] ?? null, "corr-$i", "$what correlation-id");
        expect($h['reply-to'] ?? null, "/reply-queue/$prefix.replies", "$what reply-to");
        expect($h['amqp-message-id'] ?? null, "amqp-$i", "$what amqp-message-id");
        expect($h['persistent'] ?? null, 'true', "$what persistent");
        expect($h['priority'] ?? null, '4', "$what priority");
        expect($h['type'] ?? null, 'pika.test', "$what type");
        expect($h['app-id'] ?? null, 'pika', "$what app-id");
        expect($h['timestamp'] ?? null, '1700000000', "$what timestamp");
        expect($h['x-index'] ?? null, (string) $i, "$what x-index (an AMQP long)");
        expect($h['x-client'] ?? null, 'pika', "$what x-client");
        // the extension does not undo STOMP 1.1/1.2 header escaping: the value as it came on the wire
        expect($h['x-colon'] ?? null, 'a\\cb', "$what x-colon (a:b escaped)");
        if (!isset($h['ack']) || $h['ack'] === '') {
            fail("$what has no ack header (STOMP 1.2, ack:client-individual)");
        }
    }
    // client-individual: ack the 1st and the 3rd; the 2nd stays unacked and goes back at DISCONNECT
    foreach ([0, 2] as $i) {
        expect($stomp->ack($frames[$i]->headers['ack'], ['id' => $frames[$i]->headers['ack'],
            'receipt' => "php-ack-$i"]), true, "ACK of message $i with a receipt");
    }
    unset($stomp);  // DISCONNECT
    echo 'php stomp: OK (consume: ' . COUNT . " messages with AMQP properties as headers, 2 individual acks)\n";
    exit(0);
} catch (StompException $e) {
    fail('StompException: ' . $e->getMessage() . ($e->getDetails() ? ' (' . $e->getDetails() . ')' : ''));
} catch (Throwable $e) {
    fail(get_class($e) . ': ' . $e->getMessage());
}
