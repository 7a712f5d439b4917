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
//
// Markers are written without fsync: a marker lost in a power cut can only
// let a later duplicate into the spool a second time, never lose an event, and
// the worker's own exactly-once record absorbs such a duplicate.
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

    /// Takes the lock on `key`'s marker, waiting until `deadline`, and reads its state.
    public func acquire(key: String, deadline: Deadline, nowSeconds: Int64) throws(LockStoreError) -> HeldMarker {
        let path = path(for: key)
        var backoffNanos: UInt64 = 200_000
        while true {
            var fd = fs.open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
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
            var held = stat()
            var live = stat()
            if fstat(fd, &held) != 0 || stat(path, &live) != 0 || held.st_ino != live.st_ino || held.st_nlink == 0 {
                _ = fs.close(fd)
                continue
            }
            return HeldMarker(fd: fd, path: path, state: readState(fd, nowSeconds: nowSeconds))
        }
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
        case "C":
            guard let expires = Int64(fields[2]) else { return .absent }
            return expires < nowSeconds ? .absent : .committed(id: fields[1], expiresAt: expires)
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

    /// Forgets an attempt that did not complete, so the next delivery starts afresh.
    public func clear(_ marker: HeldMarker) {
        _ = ftruncate(marker.fd, 0)
    }

    /// Releases the lock (closing the descriptor drops the flock).
    public func release(_ marker: HeldMarker) {
        _ = fs.close(marker.fd)
    }
}
