// The health answer (GET /webhooks/installer/health through the snippet): can
// the spool take an event now, how much room is left, and how long the oldest
// event has waited for the worker. Cheap enough to poll: one file created and
// removed in tmp/, one statvfs, and a listing of new/ and of its oldest bucket
// (plus defer/), never a walk of the whole spool.
import Glibc

extension Spool {
    /// Microseconds since the epoch at which the event `id` arrived (ids start
    /// with them), nil for a name that is not an event id.
    public static func receivedMicros(ofId id: String) -> Int64? {
        let digits = id.utf8.prefix(16)
        guard digits.count == 16, digits.allSatisfy({ (48...57).contains($0) }) else { return nil }
        return Int64(String(decoding: digits, as: UTF8.self))
    }

    /// The id of the event that has waited longest in new/ or defer/, nil when none waits.
    public func oldestWaitingId() -> String? {
        var oldest: String? = nil
        for bucket in (listDirectory(root + "/new") ?? []).sorted() {
            if let first = (listDirectory(root + "/new/" + bucket) ?? []).filter({ Self.receivedMicros(ofId: $0) != nil }).min() {
                oldest = first
                break
            }
        }
        for id in listDirectory(root + "/defer") ?? [] where Self.receivedMicros(ofId: id) != nil {
            if oldest.map({ id < $0 }) ?? true { oldest = id }
        }
        return oldest
    }

    /// Creates and removes a file in tmp/, as an event's write would: nil when
    /// that worked, otherwise the failure.
    public func probeWritable() -> SystemError? {
        let path = root + "/tmp/health-" + Hex.encode(Crypto.randomBytes(8))
        let fd = fs.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return SystemError("open", path, errno) }
        var byte: UInt8 = 0x0A
        let wrote = fs.write(fd, &byte, 1)
        let writeErrno = errno
        _ = fs.close(fd)
        _ = fs.unlink(path)
        return wrote == 1 ? nil : SystemError("write", path, wrote < 0 ? writeErrno : EIO)
    }
}

extension Receiver {
    /// Answers the health endpoint: 200 when an event would be stored now,
    /// 503 when the spool is not writable or below WEBHOOK_MIN_FREE_BYTES.
    func health(_ request: IncomingRequest, requestId: String) -> Response {
        guard request.method == "GET" || request.method == "HEAD" else {
            return errorResponse(
                405, "method_not_allowed", "only GET and HEAD are answered here", requestId: requestId, allow: "GET, HEAD")
        }
        let nowMicros = clock.nowMicros()
        var problems: [String] = []
        let unwritable = spool.probeWritable()
        if let unwritable { problems.append("spool not writable: \(unwritable)") }
        let free = spool.freeSpace()
        if let free, config.minFreeBytes > 0, free.bytes < config.minFreeBytes || free.inodes < 64 {
            problems.append("low disk space: \(free.bytes) bytes, \(free.inodes) inodes free")
        }
        if free == nil { problems.append("statvfs of the spool failed") }
        let oldest = spool.oldestWaitingId().flatMap(Spool.receivedMicros(ofId:)).map { max(0, (nowMicros - $0) / 1_000_000) }
        var body: [UInt8] = []
        body.append(contentsOf: "{\"status\":".utf8)
        JSONText.appendString(problems.isEmpty ? "ok" : "unavailable", to: &body)
        body.append(contentsOf: ",\"spool_writable\":\(unwritable == nil)".utf8)
        body.append(contentsOf: ",\"free_bytes\":\(free.map { String($0.bytes) } ?? "null")".utf8)
        body.append(contentsOf: ",\"free_inodes\":\(free.map { String($0.inodes) } ?? "null")".utf8)
        body.append(contentsOf: ",\"min_free_bytes\":\(config.minFreeBytes)".utf8)
        body.append(contentsOf: ",\"oldest_waiting_seconds\":\(oldest.map(String.init) ?? "null")".utf8)
        if !problems.isEmpty {
            body.append(contentsOf: ",\"message\":".utf8)
            JSONText.appendString(problems.joined(separator: "; "), to: &body)
        }
        body.append(contentsOf: "}".utf8)
        var r = Response(
            status: problems.isEmpty ? 200 : 503, body: body, outcome: problems.isEmpty ? "healthy" : "unhealthy",
            requestId: requestId, detail: problems.isEmpty ? nil : problems.joined(separator: "; "))
        if !problems.isEmpty { r.headers.append(("Retry-After", String(Self.retryAfterSeconds))) }
        return r
    }
}
