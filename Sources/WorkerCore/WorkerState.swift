// The worker's own files: the run lock, attempt logs, persistent counters and
// the last-run summary, all under the spool.
public import Foundation
import Glibc
public import WebhookCore

/// The drain run lock: at most one drain works on a spool at a time.
public final class RunLock {
    private let fd: Int32

    private init(fd: Int32) { self.fd = fd }

    deinit { close(fd) }

    /// Takes the lock without waiting; nil when another run holds it.
    public static func take(spoolDir: String) throws(SystemError) -> RunLock? {
        let path = spoolDir + "/worker/drain.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw SystemError("open", path, errno) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            close(fd)
            if code == EWOULDBLOCK { return nil }
            throw SystemError("flock", path, code)
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        return RunLock(fd: fd)
    }
}

/// One line of an event's attempt log.
public struct AttemptEntry: Sendable, Equatable {
    /// When the attempt ended, Unix seconds.
    public var at: Int64
    /// Its number, from 1.
    public var attempt: Int
    /// `exit`, `signal`, `timeout`, `http`, `transport`, `spawn` or `interrupted`.
    public var kind: String
    /// Exit status, signal number or HTTP status.
    public var code: Int
    /// The last lines of stderr or of the answer.
    public var detail: String
    /// When the next attempt is due (Unix seconds); nil once dead-lettered.
    public var nextAt: Int64?

    /// Creates an entry.
    public init(at: Int64, attempt: Int, kind: String, code: Int, detail: String, nextAt: Int64?) {
        self.at = at
        self.attempt = attempt
        self.kind = kind
        self.code = code
        self.detail = detail
        self.nextAt = nextAt
    }

    /// A human summary: `exit 1`, `HTTP 502`, `timeout after 30 s`.
    public var reason: String {
        switch kind {
        case "exit": return "exit \(code)"
        case "signal": return "killed by signal \(code)"
        case "timeout": return "timeout after \(code) s"
        case "http": return "HTTP \(code)"
        case "interrupted": return "interrupted: the worker stopped mid-attempt"
        default: return "\(kind) \(code)"
        }
    }

    var json: [String: Any] {
        var d: [String: Any] = ["at": at, "attempt": attempt, "kind": kind, "code": code, "detail": detail]
        if let nextAt { d["next_at"] = nextAt }
        return d
    }

    init?(json d: [String: Any]) {
        guard let at = (d["at"] as? NSNumber)?.int64Value, let attempt = (d["attempt"] as? NSNumber)?.intValue,
            let kind = d["kind"] as? String
        else { return nil }
        self.init(
            at: at, attempt: attempt, kind: kind, code: (d["code"] as? NSNumber)?.intValue ?? 0,
            detail: d["detail"] as? String ?? "", nextAt: (d["next_at"] as? NSNumber)?.int64Value)
    }
}

/// Attempt logs: `attempts/<id>`, one JSON object per line.
public struct AttemptLog: Sendable {
    /// The spool root.
    public let spoolDir: String

    /// The log of the spool at `spoolDir`.
    public init(spoolDir: String) { self.spoolDir = spoolDir }

    func path(_ id: String) -> String { spoolDir + "/attempts/" + id }

    /// The entries for `id`, oldest first (none when it never failed).
    public func entries(_ id: String) -> [AttemptEntry] {
        guard let data = FileManager.default.contents(atPath: path(id)) else { return [] }
        return data.split(separator: 10).compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any]).flatMap { AttemptEntry(json: $0) }
        }
    }

    /// Appends `entry` to `id`'s log.
    public func append(_ id: String, _ entry: AttemptEntry) throws(SystemError) {
        guard var line = try? JSONSerialization.data(withJSONObject: entry.json, options: [.sortedKeys]) else {
            throw SystemError("encode", path(id), EINVAL)
        }
        line.append(10)
        let fd = open(path(id), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw SystemError("open", "attempts/" + id, errno) }
        defer { close(fd) }
        let ok = line.withUnsafeBytes { FileOps.system.writeAll(fd, $0) }
        guard ok else { throw SystemError("write", "attempts/" + id, errno) }
    }

    /// Forgets `id`'s attempts.
    public func remove(_ id: String) { unlink(path(id)) }
}

/// Totals kept across runs, for metrics.
public struct Counters: Sendable, Equatable {
    /// Name → value.
    public var values: [String: Int64] = [:]

    /// Adds `n` to `name`.
    public mutating func add(_ name: String, _ n: Int64 = 1) { values[name, default: 0] += n }
}

/// Small JSON state files under `worker/`, replaced atomically.
public struct WorkerFiles: Sendable {
    /// The spool root.
    public let spoolDir: String

    /// The files of the spool at `spoolDir`.
    public init(spoolDir: String) { self.spoolDir = spoolDir }

    /// Reads `worker/<name>` as a JSON object.
    public func read(_ name: String) -> [String: Any]? {
        guard let data = FileManager.default.contents(atPath: spoolDir + "/worker/" + name) else { return nil }
        return try? JSONSerialization.jsonObject(with: data) as? [String: Any]
    }

    /// Writes `worker/<name>` atomically.
    public func write(_ name: String, _ object: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted]) else { return }
        writeAtomically(spoolDir + "/worker/" + name, data)
    }

    /// Persistent counters.
    public func counters() -> Counters {
        var c = Counters()
        for (k, v) in read("counters") ?? [:] { if let n = (v as? NSNumber)?.int64Value { c.values[k] = n } }
        return c
    }

    /// Appends one failure time to the 24 h failure record.
    public func recordFailure(at seconds: Int64) {
        let fd = open(spoolDir + "/worker/failures", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let line = Array("\(seconds)\n".utf8)
        _ = line.withUnsafeBytes { FileOps.system.writeAll(fd, $0) }
    }

    /// Failure times recorded since `since`.
    public func failures(since: Int64) -> Int {
        guard let data = FileManager.default.contents(atPath: spoolDir + "/worker/failures") else { return 0 }
        return data.split(separator: 10).filter { (Int64(String(decoding: $0, as: UTF8.self)) ?? 0) >= since }.count
    }

    /// Drops failure times before `before`.
    public func trimFailures(before: Int64) {
        guard let data = FileManager.default.contents(atPath: spoolDir + "/worker/failures") else { return }
        let kept = data.split(separator: 10).filter { (Int64(String(decoding: $0, as: UTF8.self)) ?? 0) >= before }
        var out = Data()
        for line in kept {
            out.append(contentsOf: line)
            out.append(10)
        }
        writeAtomically(spoolDir + "/worker/failures", out)
    }
}

/// Writes `data` to `path` through a temporary file and rename(2), so readers
/// see the old or the new content, never a part.
public func writeAtomically(_ path: String, _ data: Data, mode: UInt32 = 0o600) {
    let tmp = path + ".tmp.\(getpid())"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode)
    guard fd >= 0 else { return }
    let ok = data.withUnsafeBytes { FileOps.system.writeAll(fd, $0) }
    fchmod(fd, mode)
    close(fd)
    if ok { rename(tmp, path) } else { unlink(tmp) }
}
