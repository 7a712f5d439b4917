// The seam for every file-system call the commit protocol makes. Production uses
// ``FileOps/system``; tests wrap it to fail the Nth call of a kind with ENOSPC or
// EIO and check that the failure is answered 5xx and leaves nothing half-done.
import CSystem
import Glibc

/// A failed system call: which call, on what, and errno.
public struct SystemError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The call that failed, e.g. `fsync`.
    public let call: String
    /// The path (relative to the spool when possible) the call was about.
    public let path: String
    /// The errno it failed with.
    public let code: Int32

    /// Creates an error record.
    public init(_ call: String, _ path: String, _ code: Int32) {
        self.call = call
        self.path = path
        self.code = code
    }

    /// `fsync new/20261204T1406: No space left on device`.
    public var description: String {
        "\(call) \(path): \(String(cString: strerror(code)))"
    }
}

/// The kinds of call a fault can be injected into.
public enum FileCall: String, Sendable, CaseIterable {
    case open, write, fsync, syncfs, close, link, rename, unlink, mkdir
}

/// File-system calls used by the spool and the lock store. Each returns the
/// system's result and leaves errno set on failure, like the call it wraps.
public struct FileOps: Sendable {
    /// open(2).
    public var open: @Sendable (_ path: String, _ flags: Int32, _ mode: UInt32) -> Int32
    /// write(2).
    public var write: @Sendable (_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int
    /// fsync(2).
    public var fsync: @Sendable (_ fd: Int32) -> Int32
    /// syncfs(2).
    public var syncfs: @Sendable (_ fd: Int32) -> Int32
    /// close(2).
    public var close: @Sendable (_ fd: Int32) -> Int32
    /// link(2).
    public var link: @Sendable (_ from: String, _ to: String) -> Int32
    /// rename(2).
    public var rename: @Sendable (_ from: String, _ to: String) -> Int32
    /// unlink(2).
    public var unlink: @Sendable (_ path: String) -> Int32
    /// mkdir(2).
    public var mkdir: @Sendable (_ path: String, _ mode: UInt32) -> Int32

    /// A set of calls; tests pass wrappers that fail on purpose.
    public init(
        open: @escaping @Sendable (_ path: String, _ flags: Int32, _ mode: UInt32) -> Int32,
        write: @escaping @Sendable (_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int,
        fsync: @escaping @Sendable (_ fd: Int32) -> Int32,
        syncfs: (@Sendable (_ fd: Int32) -> Int32)? = nil,
        close: @escaping @Sendable (_ fd: Int32) -> Int32,
        link: @escaping @Sendable (_ from: String, _ to: String) -> Int32,
        rename: @escaping @Sendable (_ from: String, _ to: String) -> Int32,
        unlink: @escaping @Sendable (_ path: String) -> Int32,
        mkdir: @escaping @Sendable (_ path: String, _ mode: UInt32) -> Int32
    ) {
        self.open = open
        self.write = write
        self.fsync = fsync
        self.syncfs = syncfs ?? { fd in iw_syncfs(fd) }
        self.close = close
        self.link = link
        self.rename = rename
        self.unlink = unlink
        self.mkdir = mkdir
    }

    /// The real system calls.
    public static let system = FileOps(
        open: { path, flags, mode in Glibc.open(path, flags, mode) },
        write: { fd, buffer, count in Glibc.write(fd, buffer, count) },
        fsync: { fd in Glibc.fsync(fd) },
        syncfs: { fd in iw_syncfs(fd) },
        close: { fd in Glibc.close(fd) },
        link: { from, to in Glibc.link(from, to) },
        rename: { from, to in Glibc.rename(from, to) },
        unlink: { path in Glibc.unlink(path) },
        mkdir: { path, mode in Glibc.mkdir(path, mode) }
    )

    /// Writes all of `bytes`, looping over short writes and EINTR.
    public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            if n == 0 {
                errno = EIO
                return false
            }
            offset += n
        }
        return true
    }

    /// Opens a directory read-only and fsyncs it, so entries made in it are durable.
    public func syncDirectory(_ path: String) -> Int32 {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0)
        guard fd >= 0 else { return errno }
        if fsync(fd) != 0 {
            let code = errno
            _ = close(fd)
            return code
        }
        return close(fd) == 0 ? 0 : errno
    }
}
