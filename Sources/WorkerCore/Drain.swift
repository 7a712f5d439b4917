// One drain run: take back what a crashed run left claimed, then hand waiting
// events to handlers, oldest first, until the spool is empty or --max-seconds.
//
// Guarantees (with the run lock held by the caller):
// - at least once: an event leaves the spool only after its handler succeeded,
//   or into failed/, skipped/ or quarantine/, never by deletion on error;
// - exactly-once effect: success is recorded, fsynced, in the event's dedupe
//   marker (H) before the event is removed, and no handler is started for a key
//   whose marker says H, so a duplicate spool entry never reaches a handler twice;
//   a crash between a handler's success and that record re-runs it once;
// - per-entity order: events with the same organizationId + data.id go to the
//   same slot in arrival order, and while one waits for a retry the later ones
//   wait too. Events of other entities run on in the other slots.
import Foundation
import Glibc
public import WebhookCore

/// What a run did.
public struct DrainReport: Sendable, Equatable {
    /// Claims a crashed run left, taken back.
    public var recovered = 0
    /// Events claimed for a handler.
    public var claimed = 0
    /// Handlers that succeeded.
    public var succeeded = 0
    /// Failures scheduled for a retry.
    public var retried = 0
    /// Events moved to failed/ after their last attempt.
    public var deadLettered = 0
    /// Events no route matched, moved to skipped/.
    public var skipped = 0
    /// Duplicate spool entries of a key already handled, removed unrun.
    public var alreadyHandled = 0
    /// Unreadable files moved to quarantine/.
    public var quarantined = 0
    /// Events held back behind an earlier event of their entity.
    public var held = 0
    /// Events left waiting because --max-seconds passed.
    public var leftForNextRun = 0

    /// Creates an empty report.
    public init() {}

    mutating func merge(_ o: DrainReport) {
        recovered += o.recovered
        claimed += o.claimed
        succeeded += o.succeeded
        retried += o.retried
        deadLettered += o.deadLettered
        skipped += o.skipped
        alreadyHandled += o.alreadyHandled
        quarantined += o.quarantined
        held += o.held
        leftForNextRun += o.leftForNextRun
    }

    /// The figures by name, for logs, counters and JSON.
    public var fields: [(String, Int)] {
        [
            ("recovered", recovered), ("claimed", claimed), ("succeeded", succeeded), ("retried", retried),
            ("dead_lettered", deadLettered), ("skipped", skipped), ("already_handled", alreadyHandled),
            ("quarantined", quarantined), ("held", held), ("left_for_next_run", leftForNextRun),
        ]
    }
}

/// An event on its way to a slot.
struct WorkItem {
    /// Where it is now, relative to the spool (`new/B/<id>` or `defer/<id>`).
    var source: String
    var record: SpoolRecord
    var bodyOffset: Int
    var priorAttempts: Int

    var entity: String? {
        guard let org = record.organizationId, let ent = record.entityId else { return nil }
        return org + "\u{0}" + ent
    }
}

/// A bounded FIFO between the dispatcher and one slot.
final class WorkQueue: @unchecked Sendable {
    private let condition = NSCondition()
    private var items: [WorkItem] = []
    private var closed = false
    private let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func put(_ item: WorkItem) {
        condition.lock()
        while items.count >= capacity && !closed { condition.wait() }
        items.append(item)
        condition.broadcast()
        condition.unlock()
    }

    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    func take() -> WorkItem? {
        condition.lock()
        defer { condition.unlock() }
        while items.isEmpty && !closed { condition.wait() }
        guard !items.isEmpty else { return nil }
        let item = items.removeFirst()
        condition.broadcast()
        return item
    }
}

/// Keys whose handler is running, across slots: two spool entries with one key
/// but different entities (possible with WEBHOOK_DEDUPE_FIELDS) land in
/// different slots, and the second must see the first's outcome, not race it.
final class KeyGate: @unchecked Sendable {
    private let condition = NSCondition()
    private var busy = Set<String>()

    func enter(_ key: String) {
        condition.lock()
        while busy.contains(key) { condition.wait() }
        busy.insert(key)
        condition.unlock()
    }

    func leave(_ key: String) {
        condition.lock()
        busy.remove(key)
        condition.broadcast()
        condition.unlock()
    }
}

/// The process group a slot's handler runs in, kept in `worker/slot-<n>.pgid`
/// (one file a slot, rewritten in place) so that a later run can kill what a
/// dead run's handlers left behind.
final class SlotGroupFile: @unchecked Sendable {
    private let fd: Int32

    init(path: String) {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
    }

    deinit { if fd >= 0 { close(fd) } }

    func set(_ pgid: Int32) {
        guard fd >= 0 else { return }
        let text = Array(String(format: "%-11d\n", pgid).utf8)
        _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }

    func clear() { set(0) }

    /// The groups recorded in the slot files under `directory`.
    static func recorded(in directory: String) -> [Int32] {
        (listDirectory(directory) ?? []).filter { $0.hasPrefix("slot-") && $0.hasSuffix(".pgid") }.compactMap { name in
            (try? readWholeFile(directory + "/" + name, limit: 64)).flatMap {
                Int32(String(decoding: $0, as: UTF8.self).trimmingSpaces())
            }
        }.filter { $0 > 1 }
    }
}

/// A drain run over one spool.
public final class Drain: @unchecked Sendable {
    let config: WorkerConfig
    let clock: WallClock
    let logger: Logger
    let exec: ExecRunner
    let random: @Sendable () -> Double
    let spool: Spool
    let attemptLog: AttemptLog
    let files: WorkerFiles
    private let reportLock = NSLock()
    private let keyGate = KeyGate()
    private var watchdog: Watchdog?
    private var report = DrainReport()

    /// A run with `config`; `clock` and `random` are the seams tests move.
    public init(
        config: WorkerConfig, clock: WallClock = .system, logger: Logger, environment: [String: String],
        random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }
    ) {
        self.config = config
        self.clock = clock
        self.logger = logger
        self.exec = ExecRunner(baseEnvironment: environment)
        self.random = random
        self.spool = Spool(root: config.spoolDir)
        self.attemptLog = AttemptLog(spoolDir: config.spoolDir)
        self.files = WorkerFiles(spoolDir: config.spoolDir)
    }

    private var nowSeconds: Int64 { clock.nowMicros() / 1_000_000 }
    private func path(_ relative: String) -> String { config.spoolDir + "/" + relative }

    private func count(_ update: (inout DrainReport) -> Void) {
        reportLock.lock()
        update(&report)
        reportLock.unlock()
    }

    /// Runs once. The caller holds the run lock.
    public func run() -> DrainReport {
        let started = monotonicNanos()
        let claimDeadline = Deadline(millisecondsFromNow: Int(config.maxSeconds * 1000))
        watchdog = Watchdog()
        defer {
            watchdog?.stop()
            watchdog = nil
        }
        if watchdog == nil { logger.log("warn", "no watchdog: handlers' children may outlive a killed drain") }
        recoverClaims()
        var blocked = Set<String>()
        var due: [WorkItem] = []
        for id in (listDirectory(path("defer")) ?? []).sorted() {
            guard let item = load("defer/" + id) else { continue }
            let next = attemptLog.entries(id).last?.nextAt ?? 0
            if next <= nowSeconds {
                due.append(item)
            } else if let entity = item.entity {
                blocked.insert(entity)
            }
        }
        let slotCount = max(1, config.concurrency)
        let queues = (0..<slotCount).map { _ in WorkQueue(capacity: 16) }
        var threads: [Thread] = []
        let finished = DispatchGroup()
        for index in 0..<slotCount {
            let mine = blocked.filter { Self.slot(for: $0, of: slotCount) == index }
            let queue = queues[index]
            finished.enter()
            let groupFile = SlotGroupFile(path: path("worker/slot-\(index).pgid"))
            let t = Thread { [self] in
                var slotBlocked = mine
                let forward = ForwardRunner()
                while let item = queue.take() {
                    process(item, blocked: &slotBlocked, forward: forward, group: groupFile, claimDeadline: claimDeadline)
                }
                finished.leave()
            }
            t.stackSize = 1 << 20
            threads.append(t)
            t.start()
        }
        func dispatch(_ item: WorkItem) {
            queues[Self.slot(for: item.entity ?? item.record.key, of: slotCount)].put(item)
        }
        for item in due {
            guard !claimDeadline.hasPassed else { break }
            dispatch(item)
        }
        let currentBucket = Timestamp.bucketName(micros: clock.nowMicros())
        bucketLoop: for bucket in (listDirectory(path("new")) ?? []).sorted() {
            let names = (listDirectory(path("new/" + bucket)) ?? []).sorted()
            for name in names {
                if claimDeadline.hasPassed {
                    count { $0.leftForNextRun += 1 }
                    continue
                }
                if let item = load("new/" + bucket + "/" + name) { dispatch(item) }
            }
            if claimDeadline.hasPassed { break bucketLoop }
            // An empty bucket of a past minute is done with; a writer that races
            // this finds it gone and makes it again.
            if bucket < currentBucket && (listDirectory(path("new/" + bucket)) ?? ["?"]).isEmpty {
                rmdir(path("new/" + bucket))
            }
        }
        for q in queues { q.close() }
        finished.wait()
        pruneSlice()
        let final = reportLock.withLock { report }
        recordRun(final, seconds: Double(monotonicNanos() - started) / 1e9)
        return final
    }

    static func slot(for key: String, of count: Int) -> Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in key.utf8 {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        return Int(h % UInt64(count))
    }

    /// Reads a spool file; an unreadable one goes to quarantine/ and nil comes back.
    func load(_ relative: String) -> WorkItem? {
        let full = path(relative)
        let id = String(relative.split(separator: "/").last ?? "")
        do {
            let bytes = try readWholeFile(full, limit: 80 << 20)
            let record = try SpoolRecord.decode(bytes)
            guard record.id == id else { throw SpoolRecord.DecodeError(reason: "file name and id differ") }
            let offset = bytes.count - record.body.count
            return WorkItem(source: relative, record: record, bodyOffset: offset, priorAttempts: attemptLog.entries(id).count)
        } catch let e as SystemError where e.code == ENOENT {
            return nil
        } catch {
            let target = "quarantine/" + id
            if rename(full, path(target)) == 0 {
                count { $0.quarantined += 1 }
                logger.log("error", "unreadable spool file quarantined", [("file", .string(relative)), ("to", .string(target)), ("error", .string("\(error)"))])
            }
            return nil
        }
    }

    /// Takes back claims of a run that died: its handler's process group is
    /// killed first, so nothing of it finishes the event behind this run's back.
    func recoverClaims() {
        let claims = (listDirectory(path("cur")) ?? []).sorted()
        if !claims.isEmpty {
            // Normally the watchdog has done this already; this covers a watchdog that died too.
            for pgid in SlotGroupFile.recorded(in: path("worker")) {
                kill(-pgid, SIGKILL)
                let gone = Deadline(millisecondsFromNow: 5000)
                while kill(-pgid, 0) == 0 && !gone.hasPassed { sleepMilliseconds(5) }
            }
        }
        for name in claims {
            let attempt = attemptLog.entries(name).count + 1
            let entry = AttemptEntry(
                at: nowSeconds, attempt: attempt, kind: "interrupted", code: 0, detail: "", nextAt: nowSeconds)
            try? attemptLog.append(name, entry)
            if rename(path("cur/" + name), path("defer/" + name)) == 0 {
                count { $0.recovered += 1 }
                logger.log("warn", "claim of a stopped run taken back", [("id", .string(name)), ("attempt", .int(attempt))])
            }
        }
    }

    private func markerState(_ key: String) -> MarkerState? {
        guard LockStore.isValidKey(key) else { return nil }
        return try? spool.lockStore.state(of: key, deadline: Deadline(millisecondsFromNow: 5000), nowSeconds: nowSeconds)
    }

    private func recordHandled(_ record: SpoolRecord) {
        guard LockStore.isValidKey(record.key) else { return }
        let store = spool.lockStore
        do throws(LockStoreError) {
            let m = try store.acquire(key: record.key, deadline: Deadline(millisecondsFromNow: 5000), nowSeconds: nowSeconds)
            defer { store.release(m) }
            var expires = nowSeconds + config.retentionSeconds
            if case .committed(_, let e) = m.state { expires = max(expires, e) }
            try store.markHandled(m, id: record.id, expiresAt: expires)
        } catch {
            logger.log("error", "could not record the success in the lock store", [("id", .string(record.id)), ("error", .string("\(error)"))])
        }
    }

    private func process(
        _ item: WorkItem, blocked: inout Set<String>, forward: ForwardRunner, group groupFile: SlotGroupFile,
        claimDeadline: Deadline
    ) {
        let record = item.record
        let id = record.id
        if let entity = item.entity, blocked.contains(entity) {
            count { $0.held += 1 }
            return
        }
        if claimDeadline.hasPassed {
            count { $0.leftForNextRun += 1 }
            return
        }
        let claimed = "cur/" + id
        guard rename(path(item.source), path(claimed)) == 0 else {
            if errno != ENOENT {
                logger.log("error", "cannot claim", [("id", .string(id)), ("error", .string(String(cString: strerror(errno))))])
            }
            return
        }
        count { $0.claimed += 1 }
        keyGate.enter(record.key)
        defer { keyGate.leave(record.key) }
        if case .handled? = markerState(record.key) {
            unlink(path(claimed))
            attemptLog.remove(id)
            count { $0.alreadyHandled += 1 }
            logger.log("info", "duplicate of a handled event removed", [("id", .string(id)), ("key", .string(record.key))])
            return
        }
        guard let action = config.action(for: record.event) else {
            rename(path(claimed), path("skipped/" + id))
            count { $0.skipped += 1 }
            logger.log("warn", "no route for event; skipped", [("id", .string(id)), ("event", .string(record.event))])
            return
        }
        let attempt = item.priorAttempts + 1
        let input = HandlerInput(record: record, path: path(claimed), bodyOffset: item.bodyOffset, attempt: attempt)
        let started = monotonicNanos()
        let outcome: HandlerOutcome
        switch action {
        case .exec(let command):
            var group: Int32 = 0
            outcome = exec.run(command, input, timeoutMilliseconds: config.timeoutMilliseconds) { pgid in
                group = pgid
                watchdog?.watch(pgid)
                groupFile.set(pgid)
            }
            if group > 0 {
                groupFile.clear()
                watchdog?.release(group)
            }
        case .forward(let url):
            outcome = forward.run(url, input, timeoutMilliseconds: config.timeoutMilliseconds)
        }
        let ms = Double(monotonicNanos() - started) / 1e6
        var fields: [(String, LogValue)] = [
            ("id", .string(id)), ("event", .string(record.event)), ("attempt", .int(attempt)), ("latency_ms", .double(ms)),
        ]
        switch outcome {
        case .success:
            recordHandled(record)
            if config.keepDone > 0 { rename(path(claimed), path("done/" + id)) } else { unlink(path(claimed)) }
            attemptLog.remove(id)
            count { $0.succeeded += 1 }
            logger.log("info", "handled", fields)
        case .failure(let kind, let code, let detail):
            let now = nowSeconds
            files.recordFailure(at: now)
            let dead = attempt >= config.attempts
            var next: Int64? = nil
            if !dead {
                let delayMs = config.retryDelayMilliseconds(afterAttempt: attempt, unit: random())
                next = now + (delayMs + 999) / 1000
            }
            let entry = AttemptEntry(at: now, attempt: attempt, kind: kind, code: code, detail: detail, nextAt: next)
            try? attemptLog.append(id, entry)
            fields.append(("reason", .string(entry.reason)))
            if dead {
                rename(path(claimed), path("failed/" + id))
                count { $0.deadLettered += 1 }
                logger.log("error", "dead-lettered after the last attempt", fields)
            } else {
                rename(path(claimed), path("defer/" + id))
                if let entity = item.entity { blocked.insert(entity) }
                count { $0.retried += 1 }
                fields.append(("next_at", .string(Timestamp.format(micros: (next ?? now) * 1_000_000))))
                logger.log("warn", "handler failed; will retry", fields)
            }
        }
    }

    /// Second-level lock-store shards one run prunes at most: 1/64 of them.
    static let pruneShardsPerRun = 1024
    /// How long one run's pruning may take at most.
    static let pruneMilliseconds = 3000

    /// The bounded share of housekeeping each run does.
    /// Each run goes on from where the last stopped, through at most
    /// `pruneShardsPerRun` shards and for at most `pruneMilliseconds`: with ten
    /// million markers on a cold cache, 1/64 of the store is minutes of reads,
    /// which would hold the run lock (and the next run's events) that long.
    func pruneSlice() {
        let saved = files.read("prune-cursor")
        // "next" counted top shards before the cursor went down to second-level
        // ones. A value out of range (a damaged file) starts from the first shard.
        let legacyTop = (saved?["next"] as? NSNumber)?.intValue
        let saidStart = (saved?["shard"] as? NSNumber)?.intValue ?? legacyTop.map { (0..<256).contains($0) ? $0 * 256 : 0 } ?? 0
        let start = (0..<65536).contains(saidStart) ? saidStart : 0
        let budget = Deadline(millisecondsFromNow: Self.pruneMilliseconds)
        let store = spool.lockStore
        var next = start
        var done = 0
        while done < Self.pruneShardsPerRun && !budget.hasPassed {
            let shard = LockStore.topShards[next / 256] + "/" + LockStore.topShards[next % 256]
            _ = store.prune(shard: shard, nowSeconds: nowSeconds, staleSeconds: config.retentionSeconds)
            next = (next + 1) % 65536
            done += 1
        }
        files.write("prune-cursor", ["shard": next])
        _ = Housekeeping(config: config, nowSeconds: nowSeconds).run()
    }

    private func recordRun(_ r: DrainReport, seconds: Double) {
        var counters = files.counters()
        for (name, value) in r.fields { counters.add(name, Int64(value)) }
        counters.add("runs")
        files.write("counters", counters.values)
        var last: [String: Any] = ["finished_at": nowSeconds, "duration_seconds": seconds]
        for (name, value) in r.fields { last[name] = value }
        files.write("last-run", last)
        var fields: [(String, LogValue)] = r.fields.map { ($0.0, .int($0.1)) }
        fields.append(("seconds", .double(seconds)))
        logger.log("info", "drain finished", fields)
        if let metrics = config.metricsFile {
            let status = SpoolStatus.read(spoolDir: config.spoolDir, nowSeconds: nowSeconds)
            writeAtomically(metrics, Data(Metrics.render(status: status, counters: counters).utf8), mode: 0o644)
        }
    }
}

/// Cleaning that is not about markers: stale tmp/ files, done/ past its bound,
/// skipped/ past retention, the failure record past 24 h.
struct Housekeeping {
    let config: WorkerConfig
    let nowSeconds: Int64
    /// A tmp/ file older than this is a writer that gave up (its deadline is seconds).
    static let staleTmpSeconds: Int64 = 3600

    func run() -> (tmp: Int, done: Int, skipped: Int) {
        let root = config.spoolDir
        var removed = (tmp: 0, done: 0, skipped: 0)
        for name in listDirectory(root + "/tmp") ?? [] {
            let p = root + "/tmp/" + name
            if let m = modificationTime(p), nowSeconds - m > Self.staleTmpSeconds, unlink(p) == 0 { removed.tmp += 1 }
        }
        let done = (listDirectory(root + "/done") ?? []).sorted()
        if done.count > config.keepDone {
            for name in done.prefix(done.count - config.keepDone) where unlink(root + "/done/" + name) == 0 { removed.done += 1 }
        }
        for name in listDirectory(root + "/skipped") ?? [] {
            let p = root + "/skipped/" + name
            if let m = modificationTime(p), nowSeconds - m > config.retentionSeconds, unlink(p) == 0 { removed.skipped += 1 }
        }
        WorkerFiles(spoolDir: root).trimFailures(before: nowSeconds - 86400)
        return removed
    }
}

func sleepMilliseconds(_ ms: Int) {
    var request = timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000)
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
}
