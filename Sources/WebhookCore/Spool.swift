// The spool: a directory tree whose file names are its state, in the manner of
// maildir. Everything lives on one local file system under WEBHOOK_SPOOL_DIR.
//
//   state        where                        put there by                 taken away by
//   writing      tmp/<id>                     webhook-fcgi (O_EXCL)        webhook-fcgi after the link or on
//                                                                          failure; prune when older than 1 h
//   waiting      new/<YYYYMMDDTHHMM>/<id>     webhook-fcgi (link)          drain (rename to cur/)
//   claimed      cur/<id>                     drain, before the handler    drain: success, retry or dead letter;
//                                                                          the next drain if this one crashed
//   retrying     defer/<id>                   drain, after a failure       drain, once due (rename to cur/)
//   dead         failed/<id>                  drain, after the last try    `retry` (back to defer/, due now)
//   skipped      skipped/<id>                 drain, when no route fits    `retry`, or prune past retention
//   unreadable   quarantine/<id>              drain                        an operator; never deleted
//   handled      done/<id> (only if kept)     drain, after success         prune, beyond the configured count
//   attempt log  attempts/<id>                drain, one JSON line a try   drain on success; kept while dead
//   dedupe       dedupe/ab/cd/<key>           webhook-fcgi; H by drain     prune, past retention
//   run state    worker/                      drain (run lock, counters, last run, each slot's
//                                             handler process group in slot-<n>.pgid)
//
// Timers are ordered so that no cleaner races a live writer: a request gives
// up after its ack deadline (3 s by default); prune calls a tmp/ file stale only
// after an hour. Only one drain runs at a time (flock on worker/drain.lock), so
// anything in cur/ when a drain starts was left by a run that died.
//
// Commit protocol for one event (no 2xx is sent before the last step):
//   1. open tmp/<id> O_CREAT|O_EXCL|O_CLOEXEC 0600, write the whole record, fsync, close;
//   2. link into new/<bucket>/<id> (a bucket made on the way is fsynced into new/),
//      unlink tmp/<id>;
//   3. fsync new/<bucket>.
// A failure at any step removes what the attempt made and reports the error; a
// failed fsync is never retried (the kernel may have dropped the dirty pages).
// Buckets are named by the minute the events arrived, so a reader can take the
// oldest work first by listing one small directory, and no directory holds more
// than a minute of traffic.
import CSystem
import Glibc

/// The spool tree and its commit protocol.
public struct Spool: Sendable {
    /// The spool's root directory.
    public let root: String
    let fs: FileOps
    let flusher: any SpoolFlusher

    /// The subdirectories every spool has.
    public static let directories = [
        "tmp", "new", "cur", "defer", "failed", "skipped", "quarantine", "done", "attempts", "dedupe", "worker",
    ]

    /// A spool rooted at `root`, flushing once per request.
    public init(root: String, fs: FileOps = .system) {
        self.root = root
        self.fs = fs
        self.flusher = RequestFlusher(fs: fs)
    }

    /// A spool rooted at `root` (which must exist) made durable as `durability` says.
    public init(root: String, fs: FileOps = .system, durability: Durability) throws(SystemError) {
        self.root = root
        self.fs = fs
        switch durability {
        case .request: flusher = RequestFlusher(fs: fs)
        case .group: flusher = try GroupFlusher(root: root, fs: fs)
        case .off: flusher = NoFlusher()
        }
    }

    /// The group flusher, when this spool uses group commit.
    public var groupFlusher: GroupFlusher? { flusher as? GroupFlusher }

    /// The lock store inside this spool.
    public var lockStore: LockStore { LockStore(root: root + "/dedupe", fs: fs) }

    /// Creates the tree (0700) where it is missing.
    public func createTree() throws(SystemError) {
        for dir in [root] + Self.directories.map({ root + "/" + $0 }) {
            if fs.mkdir(dir, 0o700) != 0 && errno != EEXIST { throw SystemError("mkdir", dir, errno) }
            var st = stat()
            guard stat(dir, &st) == 0 else { throw SystemError("stat", dir, errno) }
            guard st.st_mode & S_IFMT == S_IFDIR else { throw SystemError("mkdir", dir, ENOTDIR) }
        }
    }

    /// A new event id: arrival time in microseconds, then 40 random bits, so ids
    /// sort by arrival and never collide.
    public static func newId(receivedAtMicros: Int64) -> String {
        let digits = String(receivedAtMicros)
        let padded = String(repeating: "0", count: max(0, 16 - digits.count)) + digits
        return padded + "-" + Hex.encode(Crypto.randomBytes(5))
    }

    /// The path, relative to the root, at which `id` waits in `new/`.
    public static func waitingPath(id: String, receivedAtMicros: Int64) -> String {
        "new/" + Timestamp.bucketName(micros: receivedAtMicros) + "/" + id
    }

    /// Writes `record` to `tmp/` and makes its data durable (step 1).
    public func stage(_ record: SpoolRecord) throws(SystemError) -> String {
        let tmp = "tmp/" + record.id
        let path = root + "/" + tmp
        let fd = fs.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw SystemError("open", tmp, errno) }
        let header = record.encodedHeader()
        var failure: SystemError? = nil
        if !header.withUnsafeBytes({ fs.writeAll(fd, $0) }) || !record.body.withUnsafeBytes({ fs.writeAll(fd, $0) }) {
            failure = SystemError("write", tmp, errno)
        } else {
            do throws(SystemError) { try flusher.flushData(fd: fd, path: tmp) } catch { failure = error }
        }
        if fs.close(fd) != 0 && failure == nil {
            failure = SystemError("close", tmp, errno)
        }
        if let failure {
            _ = fs.unlink(path)
            throw failure
        }
        return tmp
    }

    /// Links a staged file into `new/` and makes the entry durable (steps 2 and 3).
    /// On failure nothing of the attempt is left in `tmp/` or `new/`.
    public func publish(staged tmp: String, as waiting: String) throws(SystemError) {
        let tmpPath = root + "/" + tmp
        let target = root + "/" + waiting
        let bucket = String(target[..<(target.lastIndex(of: "/") ?? target.endIndex)])
        do throws(SystemError) {
            var madeBucket = false
            var attempts = 0
            while fs.link(tmpPath, target) != 0 {
                let code = errno
                attempts += 1
                // ENOENT: the bucket is new, or a worker removed it as empty just now.
                guard code == ENOENT, attempts <= 3 else { throw SystemError("link", waiting, code) }
                if fs.mkdir(bucket, 0o700) == 0 {
                    madeBucket = true
                } else if errno != EEXIST {
                    throw SystemError("mkdir", relative(bucket), errno)
                }
            }
            do throws(SystemError) {
                try flusher.flushDirectories(madeBucket ? [root + "/new", bucket] : [bucket])
            } catch {
                _ = fs.unlink(target)
                throw SystemError(error.call, relative(error.path), error.code)
            }
        } catch {
            _ = fs.unlink(tmpPath)
            throw error
        }
        // The event is durable in new/; a tmp/ name left by a failed unlink is
        // a second link to the same inode, removed by prune, harmless meanwhile.
        _ = fs.unlink(tmpPath)
    }

    /// Bytes and inodes free to an unprivileged writer on the spool's file
    /// system; nil when statvfs fails.
    public func freeSpace() -> (bytes: Int, inodes: Int)? {
        var st = statvfs()
        guard statvfs(root, &st) == 0 else { return nil }
        return (Int(st.f_bavail) * Int(st.f_frsize), Int(st.f_favail))
    }

    /// Why the spool's file system is unsuitable (network file systems, whose
    /// flock, link and fsync semantics the commit protocol cannot rely on), or nil.
    public func fileSystemWarning() -> String? {
        let names: [Int: String] = [
            0x6969: "NFS", 0xFF53_4D42: "CIFS", 0xFE53_4D42: "SMB2", 0x517B: "SMB", 0x6573_5546: "FUSE",
            0x0102_1997: "9P", 0x0BD0_0BD0: "Lustre", 0x0047_4653: "GlusterFS", 0x00C3_6400: "CephFS",
        ]
        guard let name = names[iw_fs_type(root)] else { return nil }
        return "the spool \(root) is on \(name): only a local file system (ext4, xfs, …) is supported"
    }

    /// Whether a relative spool path names an existing file.
    public func exists(_ relativePath: String) -> Bool {
        var st = stat()
        return stat(root + "/" + relativePath, &st) == 0
    }

    private func relative(_ path: String) -> String {
        path.hasPrefix(root + "/") ? String(path.dropFirst(root.count + 1)) : path
    }
}
