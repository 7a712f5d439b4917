// kill -9 of webhook-fcgi at random instants under concurrent load: nothing
// acknowledged is lost, nothing partial is visible, and after the sender's
// retries and a full drain every event reached the handler exactly once.
import Foundation
import Glibc
import Testing
import WebhookClient
import WebhookCore
import WebhookTestSupport
import WorkerCore

/// Bodies sent (each once, however often it was tried) and the ones
/// acknowledged 2xx, shared by the sending threads.
final class Ledger: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var sent: [[UInt8]] = []
    private var seen: Set<BodyHash> = []
    private(set) var acknowledged: Set<BodyHash> = []
    private var attempts = 0

    func record(_ body: [UInt8], ok: Bool) {
        let hash = BodyHash(body)
        lock.withLock {
            attempts += 1
            if seen.insert(hash).inserted { sent.append(body) }
            if ok { acknowledged.insert(hash) }
        }
    }

    var acknowledgedCount: Int { lock.withLock { acknowledged.count } }
    var attemptCount: Int { lock.withLock { attempts } }

    var snapshot: (sent: [[UInt8]], acknowledged: Set<BodyHash>) { lock.withLock { (sent, acknowledged) } }
}

@Suite(.serialized) struct CrashTests {
    static var iterations: Int { Int(ProcessInfo.processInfo.environment["WEBHOOK_CRASH_ITERATIONS"] ?? "") ?? 200 }

    @Test func killingTheHandlerAtRandomLosesNothingAcknowledged() throws {
        let stack = try ReceiverStack()
        defer { stack.stop() }
        let ledger = Ledger()
        let stop = Atomic(false)
        let restarts = Generation()
        let senders = (0..<4).map { n in
            Thread {
                let connection = HTTPConnection(url: HTTPURL(stack.url)!)
                var i = 0
                var body = EventSamples.payload(type: EventSamples.types[0], sequence: n * 1_000_000)
                while !stop.value {
                    let seen = restarts.value
                    let r = try? stack.deliverer.send(body, on: connection, timeoutMilliseconds: 5000)
                    let ok = r.map { (200..<300).contains($0.status) } ?? false
                    ledger.record(body, ok: ok)
                    if ok {
                        i += 1
                        body = EventSamples.payload(type: EventSamples.types[i % 12], sequence: n * 1_000_000 + i)
                    } else {
                        // As the sender does: the same body again, once the receiver is back.
                        restarts.wait(untilPast: seen, seconds: 5)
                    }
                }
            }
        }
        for t in senders { t.start() }
        for _ in 0..<Self.iterations {
            let before = ledger.acknowledgedCount
            // Let some requests through, then kill at a random instant.
            _ = waitUntil(seconds: 5) { ledger.acknowledgedCount > before + 2 }
            usleep(UInt32.random(in: 0..<20_000))
            stack.stopHandler(signal: SIGKILL)
            try stack.startHandler()
            restarts.advance()
        }
        stop.value = true
        _ = waitUntil(seconds: 10) { senders.allSatisfy { $0.isFinished } }
        let (sent, acknowledged) = ledger.snapshot
        #expect(acknowledged.count > Self.iterations / 2, "too little got through to mean anything")
        #expect(ledger.attemptCount > acknowledged.count, "no kill caught a request in flight")

        // Whole files only, and every acknowledged event among them.
        let records = try stack.storedRecords()
        let stored = Set(records.map { BodyHash($0.body) })
        #expect(acknowledged.subtracting(stored).isEmpty, "\(acknowledged.subtracting(stored).count) acknowledged events lost")
        #expect(stored.isSubset(of: Set(sent.map { BodyHash($0) })))

        // The sender retries everything that was not acknowledged (and some that was).
        let connection = HTTPConnection(url: HTTPURL(stack.url)!)
        for body in sent {
            let r = try stack.deliverer.send(body, on: connection)
            #expect(r.status == 200, "\(r.status) \(r.text)")
        }
        // A full drain: each event's handler succeeds exactly once.
        let log = stack.dir.at("handled")
        var config = WorkerConfig(spoolDir: stack.spoolDir)
        config.defaultAction = .exec("echo \"$WEBHOOK_KEY\" >> \(log)")
        config.concurrency = 4
        config.maxSeconds = 900 // one run for all of it, however slow the machine
        let logger = Logger(program: "test") { _ in }
        let report = Drain(config: config, logger: logger, environment: ["PATH": "/usr/bin:/bin"]).run()
        #expect(report.leftForNextRun == 0, "\(report)")
        let handled = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").map(String.init)
        let keys = Set(sent.map { Hex.encode(Crypto.sha256($0)) })
        #expect(handled.count == keys.count, "\(handled.count) handler runs for \(keys.count) events")
        #expect(Set(handled) == keys)
        #expect(stack.waitingFiles.isEmpty)
    }
}

/// A flag shared between threads.
final class Atomic: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Bool
    init(_ value: Bool) { stored = value }
    var value: Bool {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}

/// A count the restarting thread advances; senders wait for it to move.
final class Generation: @unchecked Sendable {
    private let condition = NSCondition()
    private var count = 0

    var value: Int { condition.withLock { count } }

    func advance() {
        condition.withLock {
            count += 1
            condition.broadcast()
        }
    }

    /// Returns once the count is past `seen`, or after `seconds`.
    func wait(untilPast seen: Int, seconds: Double) {
        let limit = Date(timeIntervalSinceNow: seconds)
        condition.withLock {
            while count <= seen && condition.wait(until: limit) {}
        }
    }
}
