// Making staged events durable: once per request, or shared by every request
// that is waiting at the same moment (group commit).
//
// Group commit keeps invariant 1 (no 2xx before the event is durable): a
// request parks after writing its file; the first parked request becomes the
// leader, takes everything parked so far as one batch, flushes it, and wakes
// each member with the result of the flush that covered its file. Requests
// that arrive during a flush form the next batch. A failed flush fails every
// member of its batch (each answers 503 and removes its file); it is never
// retried, since the kernel may already have dropped the pages it failed on.
//
// The data of a batch is flushed with one syncfs(2) on the spool's file
// system, before any member links its file into new/ (a link made durable
// ahead of its data could expose a partial file after a crash). The new
// directory entries are then flushed with one fsync per directory the batch
// touched. syncfs flushes everything dirty on that file system, other
// programs' files included: on a busy shared disk, `request` mode may suit
// better. Error reporting by syncfs needs Linux 5.8 or later.
//
// Why not an fsync of each file with only the directory flush shared: on
// ext4 with and without a journal, through nginx at 32 connections, that
// measured 0.6-0.8 times the rate of one syncfs per batch, and no better than
// `request`. Probably because ext4's fsync of a newly created file also makes
// its entry in tmp/ durable, the same directory for every request, so the
// per-file fsyncs contend where one syncfs writes that directory once.
import CSystem
import Glibc

/// Makes staged files and new directory entries durable.
public protocol SpoolFlusher: Sendable {
    /// Makes the data of the open file `fd` (at `path`, relative to the spool) durable.
    func flushData(fd: Int32, path: String) throws(SystemError)
    /// Makes the entries of `directories` (absolute paths) durable.
    func flushDirectories(_ directories: [String]) throws(SystemError)
}

/// `request`: one fsync of each file and of each directory per request.
public struct RequestFlusher: SpoolFlusher {
    let fs: FileOps

    public func flushData(fd: Int32, path: String) throws(SystemError) {
        if fs.fsync(fd) != 0 { throw SystemError("fsync", path, errno) }
    }

    public func flushDirectories(_ directories: [String]) throws(SystemError) {
        for dir in directories {
            let code = fs.syncDirectory(dir)
            if code != 0 { throw SystemError("fsync", dir, code) }
        }
    }
}

/// `off`: nothing is flushed (benchmarks only).
public struct NoFlusher: SpoolFlusher {
    public func flushData(fd: Int32, path: String) throws(SystemError) {}
    public func flushDirectories(_ directories: [String]) throws(SystemError) {}
}

/// A batch of requests sharing one flush.
final class FlushBatch: @unchecked Sendable {
    var directories = Set<String>()
    var done = false
    var code: Int32 = 0
    var size = 0
}

/// Leader-based batching: whoever finds no flush running flushes for all who wait.
final class FlushGroup: @unchecked Sendable {
    // Allocated, not stored properties: pthread objects must keep one address.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var current = FlushBatch()
    private var flushing = false

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Requests parked in the batch that has not started flushing.
    var waiting: Int {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return current.size
    }

    /// Joins the current batch (adding `directories` to it) and returns the
    /// errno of the flush that covered it (0 on success).
    func join(directories: [String], perform: (_ batch: FlushBatch) -> Int32) -> Int32 {
        pthread_mutex_lock(mutex)
        let mine = current
        mine.size += 1
        for d in directories { mine.directories.insert(d) }
        while !mine.done {
            if !flushing {
                // Become the leader of everything parked so far.
                flushing = true
                let batch = current
                current = FlushBatch()
                pthread_mutex_unlock(mutex)
                let code = perform(batch)
                pthread_mutex_lock(mutex)
                batch.code = code
                batch.done = true
                flushing = false
                pthread_cond_broadcast(condition)
            } else {
                pthread_cond_wait(condition, mutex)
            }
        }
        let code = mine.code
        pthread_mutex_unlock(mutex)
        return code
    }
}

/// `group`: concurrent requests share one syncfs for their data and one fsync
/// per directory for their entries.
public final class GroupFlusher: SpoolFlusher, @unchecked Sendable {
    private let rootFd: Int32
    private let fs: FileOps
    private let data = FlushGroup()
    private let entries = FlushGroup()

    /// A flusher for the file system holding `root`.
    public init(root: String, fs: FileOps) throws(SystemError) {
        rootFd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootFd >= 0 else { throw SystemError("open", root, errno) }
        self.fs = fs
    }

    deinit { close(rootFd) }

    /// Requests parked for the next data flush (for tests and diagnostics).
    public var waitingForData: Int { data.waiting }

    public func flushData(fd: Int32, path: String) throws(SystemError) {
        let code = data.join(directories: []) { _ in
            fs.syncfs(rootFd) == 0 ? 0 : errno
        }
        if code != 0 { throw SystemError("syncfs", path, code) }
    }

    public func flushDirectories(_ directories: [String]) throws(SystemError) {
        var failed = ""
        let code = entries.join(directories: directories) { batch in
            for dir in batch.directories.sorted() {
                let code = fs.syncDirectory(dir)
                if code != 0 {
                    failed = dir
                    return code
                }
            }
            return 0
        }
        if code != 0 { throw SystemError("fsync", failed.isEmpty ? directories.joined(separator: ",") : failed, code) }
    }
}
