// The dedupe lock store: one small marker file per dedupe key under `dedupe/`,
// sharded as `dedupe/ab/cd/<key>` so no directory grows past a few hundred
// entries at ten million keys.
//
// A request holds the marker's flock for as long as it works on the key, so a
// concurrent duplicate waits (bounded by the request deadline) and then reads
// the outcome:
//
//   marker content              meaning                         next holder does
//   (empty or absent)           never accepted, or cleared      accepts the event
//   P <spool path> <since>      a writer started and died       checks <spool path>:
//                               (the lock is free again)        published -> commit it; else accept anew
//   C <id> <expires>            accepted as <id>                answers "duplicate"; past <expires> it is
//                                                               treated as absent (retention over)
//   H <id> <expires>            accepted, and a worker handler  the same as C; the worker never runs a
//                               succeeded on it (fsynced)       handler for this key again
//
// The receive path writes markers without fsync: a marker lost in a power cut
// can only let a later duplicate into the spool a second time, never lose an
// event, and the worker's fsynced H record keeps such a duplicate from reaching
// a handler twice. webhook-worker prunes markers past <expires> (and stale P or
// empty ones) under the same flock; a request re-checks the inode after locking,
// so it never works on a marker a pruner has just unlinked.
import Glibc

/// Why a dedupe key could not be worked on.
public enum LockStoreError: Error, Equatable, Sendable {
    /// The key stayed locked by another request past the deadline.
    case timedOut
    /// A system call failed.
    case system(SystemError)
}

/// The recorded state of a dedupe key.
public enum MarkerState: Equatable, Sendable {
    /// Not accepted (or retention over).
    case absent
    /// A writer started on it and did not finish; the spool path it was writing.
    case inProgress(spoolPath: String)
    /// Accepted as `id`, remembered until `expiresAt` (Unix seconds).
    case committed(id: String, expiresAt: Int64)
    /// Accepted as `id` and handled by the worker; remembered until `expiresAt`.
    case handled(id: String, expiresAt: Int64)
}

/// A held marker lock; release it with ``LockStore/release(_:)``.
public struct HeldMarker: Sendable {
    fileprivate let fd: Int32
    /// The marker's path.
    public let path: String
    /// The state read right after taking the lock.
    public let state: MarkerState
}

/// Markers for dedupe keys, with flock for mutual exclusion.
public struct LockStore: Sendable {
    /// The `dedupe/` directory.
    public let root: String
    let fs: FileOps

    /// A lock store rooted at `root`.
    public init(root: String, fs: FileOps = .system) {
        self.root = root
        self.fs = fs
    }

    /// Whether `key` is a well-formed dedupe key (64 lower-case hex digits), so
    /// that it can never name a path outside the store.
    public static func isValidKey(_ key: String) -> Bool {
        key.utf8.count == 64 && key.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    /// The marker path for `key`.
    public func path(for key: String) -> String {
        directories(for: key).shard + "/" + key
    }

    private func directories(for key: String) -> (top: String, shard: String) {
        precondition(Self.isValidKey(key), "dedupe key must be 64 lower-case hex digits")
        let u = Array(key.utf8)
        let top = root + "/" + String(decoding: u[0..<2], as: UTF8.self)
        return (top, top + "/" + String(decoding: u[2..<4], as: UTF8.self))
    }

    private func ensureDirectory(_ path: String) -> Int32 {
        if fs.mkdir(path, 0o700) == 0 || errno == EEXIST { return 0 }
        return errno
    }

    /// The state of `key`'s marker, read under its lock without creating it; absent when there is none.
    public func state(of key: String, deadline: Deadline, nowSeconds: Int64) throws(LockStoreError) -> MarkerState {
        guard let m = try acquire(key: key, deadline: deadline, nowSeconds: nowSeconds, create: false) else { return .absent }
        defer { release(m) }
        return m.state
    }

    /// Takes the lock on `key`'s marker, waiting until `deadline`, and reads its state.
    public func acquire(key: String, deadline: Deadline, nowSeconds: Int64) throws(LockStoreError) -> HeldMarker {
        // With create, a marker is always there to lock.
        guard let m = try acquire(key: key, deadline: deadline, nowSeconds: nowSeconds, create: true) else {
            throw .system(SystemError("open", path(for: key), ENOENT))
        }
        return m
    }

    private func acquire(key: String, deadline: Deadline, nowSeconds: Int64, create: Bool) throws(LockStoreError)
        -> HeldMarker?
    {
        let path = path(for: key)
        var backoffNanos: UInt64 = 200_000
        while true {
            var fd = fs.open(path, O_RDWR | (create ? O_CREAT : 0) | O_CLOEXEC | O_NOFOLLOW, 0o600)
            if fd < 0 && errno == ENOENT && !create { return nil }
            if fd < 0 && errno == ENOENT {
                let (top, shard) = directories(for: key)
                for dir in [top, shard] {
                    let code = ensureDirectory(dir)
                    if code != 0 { throw .system(SystemError("mkdir", dir, code)) }
                }
                fd = fs.open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            }
            guard fd >= 0 else { throw .system(SystemError("open", path, errno)) }
            while flock(fd, LOCK_EX | LOCK_NB) != 0 {
                if errno != EWOULDBLOCK && errno != EINTR {
                    let code = errno
                    _ = fs.close(fd)
                    throw .system(SystemError("flock", path, code))
                }
                let left = deadline.remainingNanos
                if left == 0 {
                    _ = fs.close(fd)
                    throw .timedOut
                }
                sleepNanos(min(backoffNanos, left))
                backoffNanos = min(backoffNanos * 2, 10_000_000)
            }
            // A pruner may have unlinked the marker while we waited; a lock on an
            // unlinked inode protects nothing, so start again on the live path.
            guard Self.linkedStat(fd, at: path) != nil else {
                _ = fs.close(fd)
                continue
            }
            return HeldMarker(fd: fd, path: path, state: readState(fd, nowSeconds: nowSeconds))
        }
    }

    /// The status of the file open as `fd` when `path` still names it, or nil
    /// when it was unlinked or replaced after it was opened.
    static func linkedStat(_ fd: Int32, at path: String) -> stat? {
        var held = stat()
        var live = stat()
        guard fstat(fd, &held) == 0, held.st_nlink > 0, stat(path, &live) == 0, live.st_ino == held.st_ino,
            live.st_dev == held.st_dev
        else { return nil }
        return held
    }

    private func readState(_ fd: Int32, nowSeconds: Int64) -> MarkerState {
        var buffer = [UInt8](repeating: 0, count: 512)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n > 2 else { return .absent }
        let fields = buffer[0..<n].split(whereSeparator: { $0 == 32 || $0 == 10 }).map {
            String(decoding: $0, as: UTF8.self)
        }
        guard fields.count == 3 else { return .absent }
        switch fields[0] {
        case "P":
            return .inProgress(spoolPath: fields[1])
        case "C", "H":
            guard let expires = Int64(fields[2]) else { return .absent }
            if expires < nowSeconds { return .absent }
            return fields[0] == "C" ? .committed(id: fields[1], expiresAt: expires) : .handled(id: fields[1], expiresAt: expires)
        default:
            return .absent
        }
    }

    private func write(_ marker: HeldMarker, _ text: String) throws(LockStoreError) {
        var bytes = Array(text.utf8)
        guard lseek(marker.fd, 0, SEEK_SET) == 0 else { throw .system(SystemError("lseek", marker.path, errno)) }
        let ok = bytes.withUnsafeMutableBytes { fs.writeAll(marker.fd, UnsafeRawBufferPointer($0)) }
        guard ok else { throw .system(SystemError("write", marker.path, errno)) }
        guard ftruncate(marker.fd, off_t(bytes.count)) == 0 else {
            throw .system(SystemError("ftruncate", marker.path, errno))
        }
    }

    /// Records that the holder is writing the spool file at `spoolPath`.
    public func markInProgress(_ marker: HeldMarker, spoolPath: String, nowSeconds: Int64) throws(LockStoreError) {
        try write(marker, "P \(spoolPath) \(nowSeconds)\n")
    }

    /// Records that the key was accepted as `id` and is remembered until `expiresAt`.
    public func markCommitted(_ marker: HeldMarker, id: String, expiresAt: Int64) throws(LockStoreError) {
        try write(marker, "C \(id) \(expiresAt)\n")
    }

    /// Records, durably, that a handler succeeded on the key's event.
    public func markHandled(_ marker: HeldMarker, id: String, expiresAt: Int64) throws(LockStoreError) {
        try write(marker, "H \(id) \(expiresAt)\n")
        guard fs.fsync(marker.fd) == 0 else { throw .system(SystemError("fsync", marker.path, errno)) }
    }

    /// Forgets an attempt that did not complete, so the next delivery starts afresh.
    public func clear(_ marker: HeldMarker) {
        _ = ftruncate(marker.fd, 0)
    }

    /// Releases the lock (closing the descriptor drops the flock).
    public func release(_ marker: HeldMarker) {
        _ = fs.close(marker.fd)
    }
}

/// What one prune pass over part of the lock store did.
public struct MarkerPruneCount: Sendable, Equatable {
    /// Markers looked at.
    public var examined = 0
    /// Markers removed.
    public var removed = 0
    /// Markers skipped because a request held them.
    public var busy = 0

    /// Creates a zero count.
    public init() {}

    /// Adds the counts of another pass.
    public static func += (total: inout MarkerPruneCount, part: MarkerPruneCount) {
        total.examined += part.examined
        total.removed += part.removed
        total.busy += part.busy
    }
}

extension LockStore {
    /// The 256 top-level shard names, `00` to `ff`.
    public static let topShards: [String] = (0..<256).map { Hex.encode([UInt8($0)]) }

    /// Removes, under each marker's flock, markers past their expiry, `P` markers
    /// and empty ones older than `staleSeconds`, in top-level shard `top`.
    public func prune(top: String, nowSeconds: Int64, staleSeconds: Int64) -> MarkerPruneCount {
        var count = MarkerPruneCount()
        for shard in listDirectory(root + "/" + top) ?? [] {
            count += prune(shard: top + "/" + shard, nowSeconds: nowSeconds, staleSeconds: staleSeconds)
        }
        return count
    }

    /// Prunes one second-level shard (`ab/cd`): about 1/65536 of the store.
    public func prune(shard: String, nowSeconds: Int64, staleSeconds: Int64) -> MarkerPruneCount {
        var count = MarkerPruneCount()
        let shardPath = root + "/" + shard
        for name in listDirectory(shardPath) ?? [] where Self.isValidKey(name) {
            count.examined += 1
            let path = shardPath + "/" + name
            let fd = fs.open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0)
            guard fd >= 0 else { continue }
            defer { _ = fs.close(fd) }
            guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
                count.busy += 1
                continue
            }
            // Another pruner may have removed this marker between our open and
            // our lock, and a request made a new one at the same path: that one
            // is not ours to judge. While we hold the lock nobody else unlinks
            // the inode we checked, so the path still names it when we unlink.
            guard let held = Self.linkedStat(fd, at: path) else { continue }
            if shouldPrune(fd, modifiedAt: Int64(held.st_mtim.tv_sec), nowSeconds: nowSeconds, staleSeconds: staleSeconds) {
                if fs.unlink(path) == 0 { count.removed += 1 }
            }
        }
        return count
    }

    private func shouldPrune(_ fd: Int32, modifiedAt: Int64, nowSeconds: Int64, staleSeconds: Int64) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 512)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        let fields = n > 0
            ? buffer[0..<n].split(whereSeparator: { $0 == 32 || $0 == 10 }).map { String(decoding: $0, as: UTF8.self) } : []
        let age = nowSeconds - modifiedAt
        if fields.count == 3, fields[0] == "C" || fields[0] == "H", let expires = Int64(fields[2]) {
            return expires < nowSeconds
        }
        // Empty (a cleared attempt), P (a writer that died) or unreadable: keep a
        // while, so a takeover can still find the writer's file.
        return age > staleSeconds
    }
}
