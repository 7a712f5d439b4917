import Foundation
import Synchronization
import Glibc
import Testing
import WebhookCore
import WebhookTestSupport

/// A receiver over a scratch spool, with an adjustable clock.
final class Harness: @unchecked Sendable {
    let dir = TempDirectory("receiver")
    let secret = Array("whsec-unit".utf8)
    var config: ReceiverConfig
    let nowMicros: Int64 = 1_796_400_000_000_000
    var fs: FileOps = .system

    init(_ adjust: (inout ReceiverConfig) -> Void = { _ in }) {
        config = ReceiverConfig(secretFile: "", spoolDir: dir.path)
        adjust(&config)
        try? Spool(root: dir.path).createTree()
    }

    deinit { dir.remove() }

    var receiver: Receiver {
        Receiver(config: config, secrets: [secret], spool: Spool(root: dir.path, fs: fs), clock: .fixed(nowMicros))
    }

    func body(event: String = "order.created", timestampOffset: Int64 = -60, id: String = "e1") -> [UInt8] {
        let ts = Timestamp.format(micros: nowMicros + timestampOffset * 1_000_000)
        return Array("{\"event\":\"\(event)\",\"timestamp\":\"\(ts)\",\"organizationId\":\"o\",\"data\":{\"id\":\"\(id)\"}}".utf8)
    }

    func signed(_ body: [UInt8]) -> String { SignatureVerifier(secrets: [secret]).sign(body) }

    func send(
        _ body: [UInt8], method: String = "POST", length: String?? = .none, signature: String?? = .none,
        receiver: Receiver? = nil
    ) -> Response {
        let request = IncomingRequest(
            method: method, contentLength: length ?? String(body.count), signature: signature ?? signed(body),
            remoteAddr: "192.0.2.1")
        var source = BytesBody(body)
        return (receiver ?? self.receiver).handle(request, body: &source)
    }

    var waiting: [String] { filesUnder(dir.at("new")) }
}

@Suite struct ReceiverTests {
    @Test func acceptedThenDuplicate() throws {
        let h = Harness()
        let body = h.body()
        let first = h.send(body)
        #expect(first.status == 200)
        #expect(first.outcome == "accepted")
        let id = try #require(first.id)
        #expect(String(decoding: first.body, as: UTF8.self) == "{\"status\":\"accepted\",\"id\":\"\(id)\"}")
        let second = h.send(body)
        #expect(second.status == 200)
        #expect(String(decoding: second.body, as: UTF8.self) == "{\"status\":\"duplicate\",\"id\":\"\(id)\"}")
        #expect(h.waiting.count == 1)
        let stored = try SpoolRecord.decode(Array(try Data(contentsOf: URL(fileURLWithPath: h.dir.at("new/" + h.waiting[0])))))
        #expect(stored.body == body)
        #expect(stored.id == id)
        #expect(stored.event == "order.created")
        #expect(stored.entityId == "e1")
        #expect(stored.remoteAddr == "192.0.2.1")
        #expect(stored.headers.first?.value == h.signed(body))
    }

    @Test func statusTable() {
        let h = Harness { $0.maxBodyBytes = 1000 }
        let body = h.body()
        func check(_ r: Response, _ status: Int, _ outcome: String, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(r.status == status, "\(r.outcome)", sourceLocation: sourceLocation)
            #expect(r.outcome == outcome, sourceLocation: sourceLocation)
            let json = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]
            #expect(json?["status"] as? String == (status == 200 ? outcome : "error"), sourceLocation: sourceLocation)
        }
        let get = h.send(body, method: "GET")
        check(get, 405, "method_not_allowed")
        #expect(get.headers.contains { $0 == ("Allow", "POST") })
        check(h.send(body, length: "5000"), 413, "too_large")
        check(h.send([UInt8](repeating: 32, count: 1001), length: .some(nil)), 413, "too_large")
        check(h.send(body, length: "12x"), 400, "bad_length")
        check(h.send(body, length: "-1"), 400, "bad_length")
        check(h.send(body, length: String(body.count + 1)), 400, "bad_length")
        check(h.send(body, length: String(body.count - 1)), 400, "bad_length")
        check(h.send(body, signature: .some(nil)), 401, "unauthorized")
        check(h.send(body, signature: "sha256=nothex"), 401, "unauthorized")
        check(h.send(body, signature: "sha256=" + String(repeating: "0", count: 64)), 401, "unauthorized")
        check(h.send(Array("not json".utf8)), 400, "bad_payload")
        check(h.send(Array("{\"event\":7}".utf8)), 400, "bad_payload")
        check(h.send(h.body(timestampOffset: -8 * 86400)), 400, "replay")
        check(h.send(h.body(timestampOffset: 8 * 86400)), 400, "replay")
        #expect(h.waiting.isEmpty)
        check(h.send(body, length: .some(nil)), 200, "accepted")
        check(h.send(body), 200, "duplicate")
        #expect(h.waiting.count == 1)
    }

    @Test func unauthenticatedBodiesAreNeverParsed() {
        let h = Harness()
        // Invalid JSON with a bad signature is a 401, not a 400: nothing unsigned is looked at.
        let r = h.send(Array("{{{".utf8), signature: "sha256=" + String(repeating: "a", count: 64))
        #expect(r.status == 401)
        #expect(r.event == nil)
    }

    @Test func timestampsInsideTheWindowAndMissingOnesAreAccepted() {
        let h = Harness()
        #expect(h.send(h.body(timestampOffset: -6 * 86400)).status == 200)
        #expect(h.send(h.body(timestampOffset: 3600, id: "future")).status == 200)
        #expect(h.send(Array("{\"event\":\"order.created\",\"data\":{\"id\":\"no-ts\"}}".utf8)).status == 200)
        #expect(h.send(Array("{\"event\":\"future.type\",\"timestamp\":1736937000}".utf8)).status == 200)
        #expect(h.waiting.count == 4)
    }

    @Test func dedupeByConfiguredFields() {
        let h = Harness { $0.dedupeFields = ["event", "data.id"] }
        let a = Array("{\"event\":\"order.updated\",\"data\":{\"id\":\"x\"},\"n\":1}".utf8)
        let b = Array("{\"event\":\"order.updated\",\"data\":{\"id\":\"x\"},\"n\":2}".utf8)
        let c = Array("{\"event\":\"order.updated\",\"data\":{\"id\":\"y\"},\"n\":2}".utf8)
        #expect(h.send(a).outcome == "accepted")
        #expect(h.send(b).outcome == "duplicate")
        #expect(h.send(c).outcome == "accepted")
        // A body missing a field falls back to its own hash rather than colliding.
        let d = Array("{\"event\":\"order.updated\"}".utf8)
        #expect(h.send(d).outcome == "accepted")
        #expect(h.send(d).outcome == "duplicate")
        #expect(h.waiting.count == 3)
    }

    /// Every file-system call of the commit, failed: 503 with Retry-After, nothing
    /// published, the key not left committed, and the sender's retry accepted once.
    @Test(arguments: [
        (FileCall.open, 1), (.open, 2), (.open, 3), (.open, 4), (.write, 1), (.write, 2), (.write, 3), (.fsync, 1),
        (.fsync, 2), (.fsync, 3), (.close, 1), (.link, 1), (.mkdir, 1), (.mkdir, 2), (.mkdir, 3),
    ])
    func failedCallsAnswer503AndTheRetrySucceeds(_ fault: (FileCall, Int)) throws {
        let h = Harness()
        let plan = FaultPlan(failing: fault.0, nth: fault.1, code: ENOSPC)
        h.fs = plan.fileOps
        let body = h.body()
        let failed = h.send(body)
        #expect(plan.didFire, "fault \(fault) was never reached")
        #expect(failed.status == 503)
        #expect(failed.headers.contains { $0 == ("Retry-After", "60") })
        #expect(h.waiting.isEmpty)
        #expect(filesUnder(h.dir.at("tmp")).isEmpty)
        h.fs = .system
        let retry = h.send(body)
        #expect(retry.outcome == "accepted")
        #expect(h.send(body).outcome == "duplicate")
        #expect(h.waiting.count == 1)
    }

    /// The fourth write is the C record, after the event is already durable.
    @Test func aFailedCommitRecordStillAnswersAcceptedAndARepeatIsADuplicate() {
        let h = Harness()
        let plan = FaultPlan(failing: .write, nth: 4, code: EIO)
        h.fs = plan.fileOps
        let body = h.body()
        let first = h.send(body)
        #expect(plan.didFire)
        #expect(first.status == 200)
        #expect(first.outcome == "accepted")
        #expect(first.detail?.contains("in progress") == true)
        h.fs = .system
        let repeat_ = h.send(body)
        #expect(repeat_.outcome == "duplicate")
        #expect(repeat_.id == first.id)
        #expect(h.waiting.count == 1)
    }

    @Test func aWriterThatDiedAfterPublishingIsNotWrittenTwice() throws {
        let h = Harness()
        let body = h.body()
        let receiver = h.receiver
        let key = receiver.dedupeKey(body: body, payload: try PayloadParser.parse(body))
        // Simulate a crash between publishing and marking committed.
        let record = SpoolRecord(
            id: "0001796399999999999-deadbeef00", key: key, event: "order.created", receivedAtMicros: h.nowMicros,
            remoteAddr: "", requestId: "r", organizationId: nil, entityId: nil, timestamp: nil, headers: [], body: body)
        let spool = Spool(root: h.dir.path)
        let waiting = Spool.waitingPath(id: record.id, receivedAtMicros: h.nowMicros)
        try spool.publish(staged: try spool.stage(record), as: waiting)
        let store = spool.lockStore
        let marker = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 100), nowSeconds: 0)
        try store.markInProgress(marker, spoolPath: waiting, nowSeconds: 0)
        store.release(marker)
        let r = h.send(body)
        #expect(r.outcome == "duplicate")
        #expect(r.id == record.id)
        #expect(h.waiting.count == 1)
    }

    @Test func aWriterThatDiedBeforePublishingIsTakenOver() throws {
        let h = Harness()
        let body = h.body()
        let key = h.receiver.dedupeKey(body: body, payload: try PayloadParser.parse(body))
        let store = Spool(root: h.dir.path).lockStore
        let marker = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 100), nowSeconds: 0)
        try store.markInProgress(marker, spoolPath: "new/20261204T0000/never-written", nowSeconds: 0)
        store.release(marker)
        #expect(h.send(body).outcome == "accepted")
        #expect(h.waiting.count == 1)
    }

    @Test func aLockHeldPastTheDeadlineIs503() throws {
        let h = Harness { $0.ackDeadlineMilliseconds = 200 }
        let body = h.body()
        let key = h.receiver.dedupeKey(body: body, payload: try PayloadParser.parse(body))
        let store = Spool(root: h.dir.path).lockStore
        let marker = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 100), nowSeconds: 0)
        defer { store.release(marker) }
        let r = h.send(body)
        #expect(r.status == 503)
        #expect(r.detail?.contains("deadline") == true)
    }

    @Test func concurrentDuplicatesLandOnce() {
        let h = Harness()
        let body = h.body()
        let receiver = h.receiver
        let outcomes = Mutex<[String]>([])
        runConcurrently(40) { _ in
            let r = h.send(body, receiver: receiver)
            outcomes.withLock { $0.append(r.outcome) }
        }
        let all = outcomes.withLock { $0 }
        #expect(all.filter { $0 == "accepted" }.count == 1)
        #expect(all.filter { $0 == "duplicate" }.count == 39)
        #expect(h.waiting.count == 1)
    }

    @Test func logFieldsNeverCarryTheSecretOrSignature() {
        let h = Harness()
        let body = h.body()
        var lines: [String] = []
        for r in [h.send(body), h.send(body, signature: "sha256=" + String(repeating: "1", count: 64))] {
            let logged = Mutex<[UInt8]>([])
            let logger = Logger(program: "t") { line in logged.withLock { $0 += line } }
            logger.log("info", "request", Receiver.logFields(r, latencyMilliseconds: 1.5))
            lines.append(String(decoding: logged.withLock { $0 }, as: UTF8.self))
        }
        for line in lines {
            #expect(!line.contains("whsec-unit"))
            #expect(!line.contains(h.signed(body).dropFirst(7)))
            #expect(!line.contains("organizationId"))
        }
        #expect(lines[0].contains("\"status\":200"))
        #expect(lines[0].contains("\"latency_ms\":1.5"))
    }
}

@Suite struct GroupCommitTests {
    /// A syncfs hook the test controls.
    final class Hook: @unchecked Sendable {
        let lock = NSLock()
        var calls = 0
        var onCall: (Int) -> Int32 = { _ in 0 }
        func call() -> Int32 {
            let n = lock.withLock { () -> Int in
                calls += 1
                return calls
            }
            return onCall(n)
        }
    }

    func groupSpool(_ h: Harness, hook: Hook) throws -> Spool {
        let real = FileOps.system
        let fs = FileOps(
            open: real.open, write: real.write, fsync: real.fsync,
            syncfs: { fd in
                let code = hook.call()
                if code != 0 {
                    errno = code
                    return -1
                }
                return real.syncfs(fd)
            }, close: real.close, link: real.link, rename: real.rename, unlink: real.unlink, mkdir: real.mkdir)
        return try Spool(root: h.dir.path, fs: fs, durability: .group)
    }

    @Test func concurrentRequestsShareFlushesAndAllLandOnce() throws {
        let h = Harness { $0.durability = .group }
        let hook = Hook()
        let spool = try groupSpool(h, hook: hook)
        let receiver = Receiver(config: h.config, secrets: [h.secret], spool: spool, clock: .fixed(h.nowMicros))
        let bodies = (0..<64).map { h.body(id: "e\($0)") }
        let outcomes = Mutex<[String]>([])
        runConcurrently(bodies.count) { i in
            let r = h.send(bodies[i], receiver: receiver)
            outcomes.withLock { $0.append(r.outcome) }
        }
        #expect(outcomes.withLock { $0 }.allSatisfy { $0 == "accepted" })
        #expect(h.waiting.count == 64)
        #expect(filesUnder(h.dir.at("tmp")).isEmpty)
        #expect(hook.calls >= 1 && hook.calls <= 64)
        for file in h.waiting {
            let record = try SpoolRecord.decode(Array(try Data(contentsOf: URL(fileURLWithPath: h.dir.at("new/" + file)))))
            #expect(bodies.contains(record.body))
        }
    }

    @Test func aFailedFlushFailsItsWholeBatchAndIsNotRetried() throws {
        let h = Harness { $0.durability = .group }
        let hook = Hook()
        let spool = try groupSpool(h, hook: hook)
        let flusher = try #require(spool.groupFlusher)
        // The first flush holds until nine more requests are parked behind it;
        // the flush of those nine then fails.
        hook.onCall = { n in
            if n == 1 { _ = waitUntil { flusher.waitingForData == 9 } }
            return n == 2 ? EIO : 0
        }
        let receiver = Receiver(config: h.config, secrets: [h.secret], spool: spool, clock: .fixed(h.nowMicros))
        let bodies = (0..<10).map { h.body(id: "b\($0)") }
        let outcomes = Mutex<[Int]>([])
        runConcurrently(10) { i in
            let r = h.send(bodies[i], receiver: receiver)
            outcomes.withLock { $0.append(r.status) }
        }
        let statuses = outcomes.withLock { $0 }.sorted()
        #expect(statuses == [200] + [Int](repeating: 503, count: 9))
        #expect(hook.calls == 2)
        #expect(h.waiting.count == 1)
        #expect(filesUnder(h.dir.at("tmp")).isEmpty)
        // The sender's retries are accepted, each once.
        for body in bodies { _ = h.send(body, receiver: receiver) }
        #expect(h.waiting.count == 10)
    }

    @Test(arguments: [(FileCall.syncfs, 1), (.fsync, 1), (.open, 2)])
    func groupModeFaultsAnswer503AndLeaveNothing(_ fault: (FileCall, Int)) throws {
        let h = Harness { $0.durability = .group }
        let plan = FaultPlan(failing: fault.0, nth: fault.1, code: EIO)
        let spool = try Spool(root: h.dir.path, fs: plan.fileOps, durability: .group)
        let receiver = Receiver(config: h.config, secrets: [h.secret], spool: spool, clock: .fixed(h.nowMicros))
        let r = h.send(h.body(), receiver: receiver)
        #expect(plan.didFire)
        #expect(r.status == 503)
        #expect(h.waiting.isEmpty)
        #expect(filesUnder(h.dir.at("tmp")).isEmpty)
        #expect(h.send(h.body(), receiver: receiver).outcome == "accepted")
    }
}

@Suite struct HealthTests {
    func health(_ h: Harness, method: String = "GET", receiver: Receiver? = nil) -> (Response, [String: Any]) {
        let request = IncomingRequest(method: method, contentLength: nil, signature: nil, endpoint: "health")
        var source = BytesBody([])
        let r = (receiver ?? h.receiver).handle(request, body: &source)
        let object = (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] ?? [:]
        return (r, object)
    }

    @Test func anEmptyWritableSpoolIsHealthyWithNothingWaiting() {
        let h = Harness()
        let (r, object) = health(h)
        #expect(r.status == 200)
        #expect(object["status"] as? String == "ok")
        #expect(object["spool_writable"] as? Bool == true)
        #expect((object["free_bytes"] as? Int ?? 0) > 0)
        #expect(object["oldest_waiting_seconds"] is NSNull)
        // The probe leaves nothing behind.
        #expect(filesUnder(h.dir.at("tmp")).isEmpty)
    }

    @Test func theOldestWaitingAgeCountsFromTheOldestEvent() throws {
        let h = Harness()
        #expect(h.send(h.body(id: "a")).outcome == "accepted")
        // Ten minutes later, a second event arrives; the oldest is still the first.
        let later = Receiver(
            config: h.config, secrets: [h.secret], spool: Spool(root: h.dir.path),
            clock: .fixed(h.nowMicros + 600_000_000))
        #expect(h.send(h.body(id: "b"), receiver: later).outcome == "accepted")
        let (r, object) = health(h, receiver: later)
        #expect(r.status == 200)
        #expect(object["oldest_waiting_seconds"] as? Int == 600)
        // A deferred event older still is the oldest.
        let deferredId = Spool.newId(receivedAtMicros: h.nowMicros - 3_600_000_000)
        try Data("x".utf8).write(to: URL(fileURLWithPath: h.dir.at("defer/" + deferredId)))
        #expect(health(h, receiver: later).1["oldest_waiting_seconds"] as? Int == 4200)
    }

    @Test func aSpoolThatCannotBeWrittenIsUnhealthy() {
        let h = Harness()
        let plan = FaultPlan(failing: .open, code: EROFS)
        h.fs = plan.fileOps
        let (r, object) = health(h)
        #expect(plan.didFire)
        #expect(r.status == 503)
        #expect(r.headers.contains { $0 == ("Retry-After", "60") })
        #expect(object["status"] as? String == "unavailable")
        #expect(object["spool_writable"] as? Bool == false)
        #expect((object["message"] as? String ?? "").contains("Read-only file system"))
    }

    @Test func belowTheFreeSpaceFloorIsUnhealthy() {
        let h = Harness { $0.minFreeBytes = Int.max / 2 }
        let (r, object) = health(h)
        #expect(r.status == 503)
        #expect(object["spool_writable"] as? Bool == true)
        #expect((object["message"] as? String ?? "").contains("low disk space"))
    }

    @Test func onlyGetAndHeadAreAnswered() {
        let h = Harness()
        #expect(health(h, method: "HEAD").0.status == 200)
        let (r, _) = health(h, method: "POST")
        #expect(r.status == 405)
        #expect(r.headers.contains { $0 == ("Allow", "GET, HEAD") })
        // The webhook itself still refuses GET.
        #expect(h.send([], method: "GET").status == 405)
    }
}
