// Fault injection through the FileOps seam: fail the Nth call of one kind.
public import Glibc
import Synchronization
public import WebhookCore

/// Counts calls per kind and fails the chosen one with a chosen errno.
public final class FaultPlan: Sendable {
    private let counts = Mutex<[FileCall: Int]>([:])
    private let target: FileCall?
    private let nth: Int
    private let code: Int32
    private let fired = Atomic<Bool>(false)

    /// Fails call number `nth` (1-based) of kind `call` with `code`; nil fails nothing.
    public init(failing call: FileCall?, nth: Int = 1, code: Int32 = EIO) {
        target = call
        self.nth = nth
        self.code = code
    }

    /// Whether the fault was injected.
    public var didFire: Bool { fired.load(ordering: .relaxed) }

    /// How many calls of `kind` were made.
    public func count(_ kind: FileCall) -> Int { counts.withLock { $0[kind] ?? 0 } }

    /// Whether this call should fail (and records it).
    func shouldFail(_ kind: FileCall) -> Bool {
        let n = counts.withLock { c -> Int in
            c[kind, default: 0] += 1
            return c[kind, default: 0]
        }
        if kind == target && n == nth {
            fired.store(true, ordering: .relaxed)
            errno = code
            return true
        }
        return false
    }

    /// The system calls, with this plan's fault.
    public var fileOps: FileOps {
        let real = FileOps.system
        return FileOps(
            open: { p, f, m in self.shouldFail(.open) ? -1 : real.open(p, f, m) },
            write: { fd, b, n in self.shouldFail(.write) ? -1 : real.write(fd, b, n) },
            fsync: { fd in self.shouldFail(.fsync) ? -1 : real.fsync(fd) },
            syncfs: { fd in self.shouldFail(.syncfs) ? -1 : real.syncfs(fd) },
            close: { fd in
                if self.shouldFail(.close) {
                    _ = real.close(fd)
                    errno = self.code
                    return -1
                }
                return real.close(fd)
            },
            link: { a, b in self.shouldFail(.link) ? -1 : real.link(a, b) },
            rename: { a, b in self.shouldFail(.rename) ? -1 : real.rename(a, b) },
            unlink: { p in self.shouldFail(.unlink) ? -1 : real.unlink(p) },
            mkdir: { p, m in self.shouldFail(.mkdir) ? -1 : real.mkdir(p, m) }
        )
    }
}
