// The drain in-process, with a clock the test moves and real handler
// processes, over a spool filled through the real receive path.
import Foundation
import Glibc
import Synchronization
import Testing
import WebhookClient
import WebhookCore
import WebhookTestSupport
import WorkerCore

/// Log lines written by the code under test.
final class LogCapture: @unchecked Sendable {
    private let lock = NSLock()
    private var captured: [String] = []

    func append(_ line: [UInt8]) { lock.withLock { captured.append(String(decoding: line, as: UTF8.self)) } }
    var lines: [String] { lock.withLock { captured } }
}

/// A spool, a receiver to fill it, and drains over it at chosen times.
final class WorkerHarness: @unchecked Sendable {
    let dir = TempDirectory("worker")
    let secret = Array("whsec-worker".utf8)
    let start: Int64 = 1_796_400_000
    var config: WorkerConfig
    let log = LogCapture()

    init(_ adjust: (inout WorkerConfig) -> Void = { _ in }) {
        config = WorkerConfig(spoolDir: dir.at("spool"))
        config.retryJitter = 0
        config.timeoutMilliseconds = 10_000
        adjust(&config)
        try? Spool(root: config.spoolDir).createTree()
    }

    deinit { dir.remove() }

    var spoolDir: String { config.spoolDir }

    /// Accepts `body` through the real receive path at `start + offset` seconds.
    @discardableResult
    func receive(_ body: [UInt8], at offset: Int64 = 0) -> String {
        var rc = ReceiverConfig(secretFile: "", spoolDir: spoolDir)
        rc.retentionSeconds = 100 * 86400
        let receiver = Receiver(config: rc, secrets: [secret], spool: Spool(root: spoolDir), clock: .fixed((start + offset) * 1_000_000))
        var source = BytesBody(body)
        let r = receiver.handle(
            IncomingRequest(method: "POST", contentLength: String(body.count), signature: SignatureVerifier(secrets: [secret]).sign(body)),
            body: &source)
        precondition(r.status == 200, "receive failed: \(r.outcome)")
        return r.id ?? ""
    }

    func event(_ type: String = "order.created", org: String = "org-1", entity: String = UUID().uuidString, at offset: Int64 = 0) -> [UInt8] {
        EventSamples.payload(type: type, organizationId: org, entityId: entity, nowMicros: (start + offset) * 1_000_000)
    }

    /// Runs one drain at `start + offset` seconds.
    @discardableResult
    func drain(at offset: Int64 = 0, _ adjust: (inout WorkerConfig) -> Void = { _ in }) -> DrainReport {
        var c = config
        adjust(&c)
        let capture = log
        let logger = Logger(program: "test") { line in capture.append(line) }
        let micros = (start + offset) * 1_000_000
        return Drain(config: c, clock: .fixed(micros), logger: logger, environment: ["PATH": "/usr/bin:/bin"], random: { 0.5 }).run()
    }

    func files(_ state: String) -> [String] { filesUnder(spoolDir + "/" + state) }

    /// A handler script in the scratch dir.
    func script(_ name: String, _ body: String) -> String {
        let p = dir.at(name)
        writeFile(p, "#!/bin/sh\n" + body + "\n", mode: 0o755)
        return p
    }

    func lines(_ file: String) -> [String] {
        ((try? String(contentsOfFile: dir.at(file), encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }
}

@Suite struct DrainTests {
    @Test func successRemovesTheEventAndRecordsItHandled() throws {
        let h = WorkerHarness()
        let body = h.event()
        let id = h.receive(body)
        let r = h.drain { $0.defaultAction = .exec("cat > /dev/null") }
        #expect(r.succeeded == 1)
        #expect(h.files("new").isEmpty && h.files("cur").isEmpty && h.files("defer").isEmpty)
        let key = Hex.encode(Crypto.sha256(body))
        let store = Spool(root: h.spoolDir).lockStore
        let m = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 100), nowSeconds: h.start)
        defer { store.release(m) }
        guard case .handled(let hid, _) = m.state else {
            Issue.record("marker is \(m.state), expected handled")
            return
        }
        #expect(hid == id)
    }

    @Test(arguments: [75, 1, 2])
    func aFailingExitIsRetriedWithItsStatusLogged(_ code: Int) {
        let h = WorkerHarness()
        let id = h.receive(h.event())
        let r = h.drain { $0.defaultAction = .exec("echo 'first line' >&2; echo 'why it failed' >&2; exit \(code)") }
        #expect(r.retried == 1 && r.succeeded == 0)
        #expect(h.files("defer") == [id])
        let entries = AttemptLog(spoolDir: h.spoolDir).entries(id)
        #expect(entries.count == 1)
        #expect(entries.first?.kind == "exit")
        #expect(entries.first?.code == code)
        #expect(entries.first?.detail == "first line\nwhy it failed")
        #expect(entries.first?.nextAt == h.start + 60)
    }

    @Test func aHandlerPastItsTimeoutIsKilledWithItsWholeGroup() throws {
        let h = WorkerHarness { $0.timeoutMilliseconds = 300 }
        let id = h.receive(h.event())
        // The handler starts a child of its own; both must die at the timeout.
        let r = h.drain { $0.defaultAction = .exec("sleep 60 & echo $! > \(h.dir.at("child")); echo $$ > \(h.dir.at("parent")); wait") }
        #expect(r.retried == 1)
        let entry = try #require(AttemptLog(spoolDir: h.spoolDir).entries(id).first)
        #expect(entry.kind == "timeout")
        for file in ["parent", "child"] {
            let pid = try #require(Int32(h.lines(file).first ?? ""))
            #expect(waitUntil { kill(pid, 0) != 0 }, "\(file) \(pid) outlived the timeout")
        }
    }

    @Test func theHandlerGetsTheRawBodyByteForByteAndItsEnvironment() throws {
        let h = WorkerHarness()
        let body = Array("{\"event\":\"booking.updated\",\"organizationId\":\"Ørg\",\"data\":{\"id\":\"Åse Ødegård 𝄞\",\"n\":1e999}}\n".utf8)
        let id = h.receive(body)
        let out = h.dir.at("out")
        h.drain {
            $0.defaultAction = .exec("cat > \(out).body; env | grep '^WEBHOOK_' | sort > \(out).env")
        }
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: out + ".body"))) == body)
        let env = try String(contentsOfFile: out + ".env", encoding: .utf8)
        #expect(env.contains("WEBHOOK_ID=\(id)\n"))
        #expect(env.contains("WEBHOOK_EVENT=booking.updated\n"))
        #expect(env.contains("WEBHOOK_ATTEMPT=1\n"))
        #expect(env.contains("WEBHOOK_ORGANIZATION_ID=Ørg\n"))
        #expect(env.contains("WEBHOOK_RECEIVED_AT=\(Timestamp.format(micros: h.start * 1_000_000))\n"))
    }

    @Test func theBackoffScheduleIsHonoured() {
        let h = WorkerHarness()
        let id = h.receive(h.event())
        let runs = h.dir.at("runs")
        h.config.defaultAction = .exec("echo run >> \(runs); exit 75")
        #expect(h.drain(at: 0).retried == 1)
        // Due at +60 s (1 min), then +180 s after that (x3), then +540 s.
        #expect(h.drain(at: 59).claimed == 0)
        #expect(h.drain(at: 60).retried == 1)
        #expect(h.drain(at: 60 + 179).claimed == 0)
        #expect(h.drain(at: 60 + 180).retried == 1)
        let next = AttemptLog(spoolDir: h.spoolDir).entries(id).map(\.nextAt)
        #expect(next == [h.start + 60, h.start + 240, h.start + 240 + 540])
        #expect(h.lines("runs").count == 3)
    }

    @Test func retryDelaysGrowToTheCap() {
        var c = WorkerConfig(spoolDir: "/x")
        c.retryJitter = 0
        let minutes = (1...7).map { c.retryDelayMilliseconds(afterAttempt: $0, unit: 0.5) / 60_000 }
        #expect(minutes == [1, 3, 9, 27, 81, 243, 360])
        c.retryJitter = 0.2
        #expect(c.retryDelayMilliseconds(afterAttempt: 1, unit: 0) == 48_000)
        #expect(c.retryDelayMilliseconds(afterAttempt: 1, unit: 0.999_999) >= 71_999)
    }

    @Test func theLastAttemptDeadLettersAndRetryBringsItBack() {
        let h = WorkerHarness { $0.attempts = 2 }
        let id = h.receive(h.event())
        h.config.defaultAction = .exec("echo 'downstream said no' >&2; exit 1")
        h.drain(at: 0)
        let second = h.drain(at: 61)
        #expect(second.deadLettered == 1)
        #expect(h.files("failed") == [id])
        #expect(h.files("defer").isEmpty)
        let failed = FailedEvent.list(spoolDir: h.spoolDir)
        #expect(failed.count == 1)
        #expect(failed.first?.attempts.count == 2)
        #expect(failed.first?.attempts.last?.reason == "exit 1")
        #expect(failed.first?.attempts.last?.detail == "downstream said no")
        // Later events of the same entity are not held behind a dead one.
        let (moved, errors) = Admin.retry(spoolDir: h.spoolDir, ids: [id, "no-such-id"], nowSeconds: h.start + 100)
        #expect(moved == [id])
        #expect(errors == [.notFound("no-such-id")])
        let back = h.drain(at: 100) { $0.defaultAction = .exec("cat > /dev/null") }
        #expect(back.succeeded == 1)
        #expect(h.files("failed").isEmpty)
    }

    @Test func eventsOfOneEntityKeepTheirOrderBehindAFailure() {
        let h = WorkerHarness { $0.concurrency = 4 }
        let entity = "order-42"
        let first = h.receive(h.event("order.created", entity: entity, at: 0), at: 0)
        let second = h.receive(h.event("order.updated", entity: entity, at: 1), at: 1)
        let third = h.receive(h.event("order.completed", entity: entity, at: 2), at: 2)
        let other = h.receive(h.event("booking.created", entity: "other", at: 3), at: 3)
        let log = h.dir.at("log")
        // The first event fails once; everything else succeeds.
        let handler = h.script("handler", """
            if [ "$WEBHOOK_ID" = "\(first)" ] && [ "$WEBHOOK_ATTEMPT" = 1 ]; then exit 75; fi
            echo "$WEBHOOK_ID" >> \(log)
            """)
        h.config.defaultAction = .exec(handler)
        let run1 = h.drain(at: 10)
        #expect(run1.retried == 1)
        #expect(run1.held == 2)
        #expect(h.lines("log") == [other])
        #expect(h.files("new").count == 2)
        // Not yet due: the entity stays held.
        let run2 = h.drain(at: 30)
        #expect(run2.held == 2)
        #expect(run2.claimed == 0)
        let run3 = h.drain(at: 71)
        #expect(run3.succeeded == 3)
        #expect(h.lines("log") == [other, first, second, third])
    }

    @Test func aDuplicateSpoolEntryOfAHandledKeyNeverRunsTwice() throws {
        let h = WorkerHarness()
        let body = h.event()
        h.receive(body)
        // The receive path can leave a second entry after a crash lost its marker.
        let key = Hex.encode(Crypto.sha256(body))
        let copy = SpoolRecord(
            id: Spool.newId(receivedAtMicros: (h.start + 5) * 1_000_000), key: key, event: "order.created",
            receivedAtMicros: (h.start + 5) * 1_000_000, remoteAddr: "", requestId: "r", organizationId: "org-1",
            entityId: nil, timestamp: nil, headers: [], body: body)
        let spool = Spool(root: h.spoolDir)
        try spool.publish(staged: try spool.stage(copy), as: Spool.waitingPath(id: copy.id, receivedAtMicros: copy.receivedAtMicros))
        let runs = h.dir.at("runs")
        let r = h.drain(at: 10) { $0.defaultAction = .exec("echo x >> \(runs)") }
        #expect(r.succeeded == 1)
        #expect(r.alreadyHandled == 1)
        #expect(h.lines("runs").count == 1)
        #expect(h.files("new").isEmpty)
    }

    @Test func routesPickTheMostSpecificAndUnroutedEventsAreSkipped() {
        let h = WorkerHarness()
        let log = h.dir.at("log")
        h.config.routes = [
            Route(pattern: "order.*", action: .exec("echo \"orders $WEBHOOK_EVENT\" >> \(log)")),
            Route(pattern: "order.cancelled", action: .exec("echo \"cancel $WEBHOOK_EVENT\" >> \(log)")),
        ]
        h.receive(h.event("order.created"))
        h.receive(h.event("order.cancelled", at: 1), at: 1)
        let skipped = h.receive(h.event("booking.created", at: 2), at: 2)
        let r = h.drain(at: 5)
        #expect(r.succeeded == 2)
        #expect(r.skipped == 1)
        #expect(Set(h.lines("log")) == ["orders order.created", "cancel order.cancelled"])
        #expect(h.files("skipped") == [skipped])
        #expect(Admin.retry(spoolDir: h.spoolDir, ids: [skipped], nowSeconds: h.start).moved == [skipped])
    }

    @Test func anUnreadableSpoolFileIsQuarantinedNotDeleted() throws {
        let h = WorkerHarness()
        try FileManager.default.createDirectory(atPath: h.spoolDir + "/new/20261204T1400", withIntermediateDirectories: true)
        writeFile(h.spoolDir + "/new/20261204T1400/1796400000000000-0000000000", "garbage, not a record")
        let r = h.drain { $0.defaultAction = .exec("true") }
        #expect(r.quarantined == 1)
        #expect(h.files("quarantine") == ["1796400000000000-0000000000"])
        #expect(try String(contentsOfFile: h.spoolDir + "/quarantine/1796400000000000-0000000000", encoding: .utf8) == "garbage, not a record")
    }

    @Test func forwardPostsTheRawBodyWithTheOriginalSignature() throws {
        let server = try TinyHTTPServer(status: 503)
        defer { server.stop() }
        let h = WorkerHarness()
        let body = h.event("booking.cancelled")
        let id = h.receive(body)
        h.config.defaultAction = .forward(HTTPURL(server.url("/hooks/in"))!)
        let failed = h.drain(at: 0)
        #expect(failed.retried == 1)
        #expect(AttemptLog(spoolDir: h.spoolDir).entries(id).first?.reason == "HTTP 503")
        server.answer(204)
        let ok = h.drain(at: 61)
        #expect(ok.succeeded == 1)
        let requests = server.requests
        #expect(requests.count == 2)
        let last = try #require(requests.last)
        #expect(last.method == "POST")
        #expect(last.path == "/hooks/in")
        #expect(last.body == body)
        #expect(last.headers["x-webhook-signature"] == SignatureVerifier(secrets: [h.secret]).sign(body))
        #expect(last.headers["x-webhook-id"] == id)
        #expect(last.headers["x-webhook-attempt"] == "2")
    }

    @Test func aForwardTargetThatIsDownIsRetried() throws {
        let h = WorkerHarness()
        let id = h.receive(h.event())
        let r = h.drain { $0.defaultAction = .forward(HTTPURL("http://127.0.0.1:\(freePort())/x")!) }
        #expect(r.retried == 1)
        #expect(AttemptLog(spoolDir: h.spoolDir).entries(id).first?.kind == "transport")
    }

    @Test func eachDrainPrunesTheNextSixtyFourthOfTheLockStore() throws {
        let h = WorkerHarness()
        // Expired markers (C, expiry 1) in the first shard, the last shard a run
        // reaches (03/ff), the first it must not (04/00), and the last of all.
        let key = String(repeating: "0", count: 60)
        for shard in ["00/00", "03/ff", "04/00", "ff/ff"] {
            let dir = h.spoolDir + "/dedupe/" + shard
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            writeFile(dir + "/" + shard.replacingOccurrences(of: "/", with: "") + key, "C 1796400000000000-aa 1\n")
        }
        _ = h.drain { $0.defaultAction = .exec("true") }
        let left = Set(filesUnder(h.spoolDir + "/dedupe").map { String($0.prefix(5)) })
        #expect(left == ["04/00", "ff/ff"], "\(left)")
        // The next run goes on from 04/00.
        _ = h.drain { $0.defaultAction = .exec("true") }
        #expect(Set(filesUnder(h.spoolDir + "/dedupe").map { String($0.prefix(5)) }) == ["ff/ff"])
    }

    @Test func thePruneCursorWrapsAndADamagedOneStartsAgain() throws {
        let h = WorkerHarness()
        let key = String(repeating: "0", count: 60)
        func plant(_ shards: [String]) throws {
            for shard in shards {
                let dir = h.spoolDir + "/dedupe/" + shard
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                writeFile(dir + "/" + shard.replacingOccurrences(of: "/", with: "") + key, "C 1796400000000000-aa 1\n")
            }
        }
        func left() -> Set<String> { Set(filesUnder(h.spoolDir + "/dedupe").map { String($0.prefix(5)) }) }
        // From shard 65000 a run reaches ff/ff and goes on from 00/00 up to 01/e7.
        try plant(["fd/e7", "ff/ff", "00/00", "01/e7", "01/e8"])
        WorkerFiles(spoolDir: h.spoolDir).write("prune-cursor", ["shard": 65000])
        _ = h.drain { $0.defaultAction = .exec("true") }
        #expect(left() == ["fd/e7", "01/e8"], "\(left())")
        // Damaged cursors (out of range, or an old top-shard count that would
        // overflow) start again from the first shard instead of stopping the run.
        for saved in [["shard": 70000], ["shard": -5], ["next": Int.max / 2], ["shard": 1e300]] as [[String: Any]] {
            try plant(["00/00"])
            WorkerFiles(spoolDir: h.spoolDir).write("prune-cursor", saved)
            let report = h.drain { $0.defaultAction = .exec("true") }
            #expect(report.leftForNextRun == 0)
            #expect(!left().contains("00/00"), "\(saved)")
        }
    }

    @Test func pruneRemovesExpiredMarkersAndStaleTmpFiles() throws {
        let h = WorkerHarness()
        h.receive(h.event())
        writeFile(h.spoolDir + "/tmp/stale", "x")
        let old = timespec(tv_sec: Int(h.start - 7200), tv_nsec: 0)
        var times = [old, old]
        utimensat(AT_FDCWD, h.spoolDir + "/tmp/stale", &times, 0)
        var config = h.config
        config.retentionSeconds = 86400
        let early = Admin.prune(config: config, nowSeconds: h.start + 10)
        #expect(early["markers_removed"] == 0)
        #expect(early["tmp_removed"] == 1)
        // The receive path remembered the key for its retention (100 days here).
        let late = Admin.prune(config: config, nowSeconds: h.start + 101 * 86400)
        #expect(late["markers_examined"] == 1)
        #expect(late["markers_removed"] == 1)
        #expect(filesUnder(h.spoolDir + "/dedupe").isEmpty)
    }

    @Test func metricsAreValidTextFormat() throws {
        let h = WorkerHarness()
        h.receive(h.event())
        h.receive(h.event(at: 1), at: 1)
        let file = h.dir.at("metrics.prom")
        h.drain(at: 30) {
            $0.defaultAction = .exec("exit 1")
            $0.metricsFile = file
        }
        let text = try String(contentsOfFile: file, encoding: .utf8)
        #expect(text.contains("installer_webhooks_events_total{outcome=\"retried\"} 2\n"))
        #expect(text.contains("installer_webhooks_spool_events{state=\"defer\"} 2\n"))
        #expect(text.contains("installer_webhooks_failures_24h 2\n"))
        #expect(text.contains("installer_webhooks_oldest_waiting_seconds 30\n"))
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            #expect(line.split(separator: " ").count == 2, "\(line)")
        }
        // Every series the shipped alert rules use is one the worker writes.
        let rules = try String(contentsOfFile: Paths.packageRoot + "/dist/prometheus/installer-webhooks.rules.yml", encoding: .utf8)
        let regex = try NSRegularExpression(pattern: "installer_webhooks_[a-z0-9_]+(\\{[^}]*\\})?")
        let used = Set(regex.matches(in: rules, range: NSRange(rules.startIndex..., in: rules)).compactMap {
            Range($0.range, in: rules).map { String(rules[$0]) }
        })
        #expect(used.count >= 4, "\(used)")
        for series in used {
            #expect(text.contains("\n" + series + " "), "the rules use \(series), which the worker does not write")
        }
    }
}
