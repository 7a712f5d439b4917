// The request pipeline as a plain function from (method, headers, body) to a
// response, in the order of the status table: method, size, length, signature,
// payload, replay window, then dedupe and the durable spool write. Nothing
// unauthenticated is parsed; every failure maps to exactly one status.
import Glibc

/// The parts of a request the receiver looks at (copied out of the server's params).
public struct IncomingRequest: Sendable {
    /// REQUEST_METHOD.
    public var method: String
    /// CONTENT_LENGTH as sent; nil when absent.
    public var contentLength: String?
    /// X-Webhook-Signature.
    public var signature: String?
    /// Content-Type.
    public var contentType: String?
    /// User-Agent.
    public var userAgent: String?
    /// REMOTE_ADDR.
    public var remoteAddr: String
    /// The front end's request id (nginx `$request_id`), when passed on.
    public var requestId: String?
    /// Which endpoint the front end routed here: nil or "" for the webhook,
    /// "health" for the health answer (the snippet's `WEBHOOK_ENDPOINT` param).
    public var endpoint: String?

    /// Creates a request description.
    public init(
        method: String, contentLength: String?, signature: String?, contentType: String? = nil, userAgent: String? = nil,
        remoteAddr: String = "", requestId: String? = nil, endpoint: String? = nil
    ) {
        self.method = method
        self.contentLength = contentLength
        self.signature = signature
        self.contentType = contentType
        self.userAgent = userAgent
        self.remoteAddr = remoteAddr
        self.requestId = requestId
        self.endpoint = endpoint
    }
}

/// A source of body bytes: FastCGI stdin, CGI stdin, or memory in tests.
public protocol BodySource {
    /// Reads up to `buffer.count` bytes; returns the count, 0 at end, or -1 on error.
    mutating func read(into buffer: UnsafeMutableRawBufferPointer) -> Int
}

/// A body held in memory.
public struct BytesBody: BodySource {
    private let bytes: [UInt8]
    private var offset = 0

    /// A body of `bytes`.
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let n = min(buffer.count, bytes.count - offset)
        if n > 0 {
            bytes.withUnsafeBytes { src in
                buffer.baseAddress!.copyMemory(from: src.baseAddress! + offset, byteCount: n)
            }
        }
        offset += n
        return n
    }
}

/// What the receiver answers, with the facts for the log line.
public struct Response: Sendable {
    /// HTTP status.
    public var status: Int
    /// Extra headers (Content-Type is always JSON).
    public var headers: [(String, String)] = []
    /// The JSON body.
    public var body: [UInt8]
    /// A one-word outcome for logs and metrics.
    public var outcome: String
    /// The event type, once authenticated and parsed.
    public var event: String?
    /// The dedupe key, once computed.
    public var key: String?
    /// The spool id, for accepted and duplicate answers.
    public var id: String?
    /// The request id used in logs and the spool record.
    public var requestId: String
    /// Why it failed, for the log (never secret material).
    public var detail: String?

    /// Whether the answer is worth a log line: a monitor polling a healthy
    /// endpoint would fill the log with nothing.
    public var isWorthLogging: Bool { outcome != "healthy" }

    /// `200 OK`-style status line text.
    public var reasonPhrase: String {
        switch status {
        case 200: return "OK"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 405: return "Method Not Allowed"
        case 413: return "Content Too Large"
        case 503: return "Service Unavailable"
        default: return "Error"
        }
    }

    /// The full CGI/FastCGI response: `Status:` line, headers, blank line, body.
    public func cgiBytes() -> [UInt8] {
        var head = "Status: \(status) \(reasonPhrase)\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
        head += "Content-Length: \(body.count)\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        return Array(head.utf8) + body
    }
}

/// The receive path.
public final class Receiver: Sendable {
    /// Seconds a 503 asks the sender to wait.
    public static let retryAfterSeconds = 60
    let config: ReceiverConfig
    let verifier: SignatureVerifier
    let spool: Spool
    let clock: WallClock

    /// A receiver over `spool` with `config`'s limits and `secrets`.
    public init(config: ReceiverConfig, secrets: [[UInt8]], spool: Spool, clock: WallClock = .system) {
        self.config = config
        self.verifier = SignatureVerifier(secrets: secrets)
        self.spool = spool
        self.clock = clock
    }

    func errorResponse(
        _ status: Int, _ outcome: String, _ message: String, requestId: String, event: String? = nil,
        key: String? = nil, detail: String? = nil, allow: String = "POST"
    ) -> Response {
        var body: [UInt8] = []
        body.append(contentsOf: "{\"status\":\"error\",\"error\":".utf8)
        JSONText.appendString(outcome, to: &body)
        body.append(contentsOf: ",\"message\":".utf8)
        JSONText.appendString(message, to: &body)
        body.append(contentsOf: "}".utf8)
        var r = Response(
            status: status, body: body, outcome: outcome, event: event, key: key, requestId: requestId,
            detail: detail ?? message)
        if status == 405 { r.headers.append(("Allow", allow)) }
        if status == 503 { r.headers.append(("Retry-After", String(Self.retryAfterSeconds))) }
        return r
    }

    /// Answers one request, reading its body from `body`.
    public func handle(_ request: IncomingRequest, body source: inout some BodySource) -> Response {
        let deadline = Deadline(millisecondsFromNow: config.ackDeadlineMilliseconds)
        let requestId = Self.sanitizedRequestId(request.requestId)
        if request.endpoint == "health" { return health(request, requestId: requestId) }
        guard request.method == "POST" else {
            return errorResponse(405, "method_not_allowed", "only POST is accepted", requestId: requestId)
        }
        // Size first, from the declared length, before anything is allocated.
        var declared: Int? = nil
        if let text = request.contentLength, !text.isEmpty {
            guard text.utf8.count <= 18, text.utf8.allSatisfy({ (48...57).contains($0) }), let n = Int(text) else {
                return errorResponse(400, "bad_length", "CONTENT_LENGTH is not a decimal byte count", requestId: requestId)
            }
            guard n <= config.maxBodyBytes else {
                return errorResponse(
                    413, "too_large", "body exceeds \(config.maxBodyBytes) bytes", requestId: requestId,
                    detail: "declared \(n) bytes")
            }
            declared = n
        }
        let body: [UInt8]
        switch Self.readBody(&source, declared: declared, limit: config.maxBodyBytes) {
        case .success(let b): body = b
        case .failure(.tooLarge):
            return errorResponse(413, "too_large", "body exceeds \(config.maxBodyBytes) bytes", requestId: requestId)
        case .failure(.short(let got)):
            return errorResponse(
                400, "bad_length", "body is shorter than CONTENT_LENGTH", requestId: requestId,
                detail: "read \(got) of \(declared ?? 0) bytes")
        case .failure(.long):
            return errorResponse(400, "bad_length", "body is longer than CONTENT_LENGTH", requestId: requestId)
        case .failure(.unreadable):
            return errorResponse(400, "bad_length", "body could not be read", requestId: requestId)
        }
        do {
            try verifier.verify(header: request.signature, body: body)
        } catch {
            return errorResponse(401, "unauthorized", error.reason, requestId: requestId)
        }
        let payload: Payload
        do {
            payload = try PayloadParser.parse(body, extraPaths: config.dedupeFields)
        } catch {
            return errorResponse(400, "bad_payload", error.reason, requestId: requestId)
        }
        let nowMicros = clock.nowMicros()
        let nowSeconds = nowMicros / 1_000_000
        var expiresAt = nowSeconds + config.retentionSeconds
        if let text = payload.timestamp, let sent = Timestamp.parseSeconds(text) {
            if sent < nowSeconds - config.retentionSeconds {
                return errorResponse(
                    400, "replay", "timestamp is older than the dedupe retention", requestId: requestId,
                    event: payload.event)
            }
            if sent > nowSeconds + config.retentionSeconds {
                return errorResponse(
                    400, "replay", "timestamp is further in the future than the dedupe retention",
                    requestId: requestId, event: payload.event)
            }
            // Remember the key as long as its timestamp stays inside the window.
            expiresAt = max(nowSeconds, sent) + config.retentionSeconds
        }
        let key = dedupeKey(body: body, payload: payload)
        // Like Postfix's queue_minfree: refuse while there is room to say so,
        // rather than fill the disk to the last block.
        if config.minFreeBytes > 0, let free = spool.freeSpace(),
            free.bytes < config.minFreeBytes + body.count || free.inodes < 64
        {
            return errorResponse(
                503, "unavailable", "event could not be stored; retry later", requestId: requestId,
                event: payload.event, key: key,
                detail: "low disk space: \(free.bytes) bytes, \(free.inodes) inodes free on the spool")
        }
        var response = accept(
            body: body, payload: payload, key: key, expiresAt: expiresAt, request: request, requestId: requestId,
            nowMicros: nowMicros, deadline: deadline)
        response.event = payload.event
        response.key = key
        return response
    }

    /// The dedupe key: SHA-256 of the body, or of the configured fields when all are present.
    public func dedupeKey(body: [UInt8], payload: Payload) -> String {
        if !config.dedupeFields.isEmpty {
            var material: [UInt8] = []
            var complete = true
            for field in config.dedupeFields {
                guard let value = payload.fields[field] else {
                    complete = false
                    break
                }
                let text = Array(value.text.utf8)
                material.append(contentsOf: "\(field)=\(text.count):".utf8)
                material.append(contentsOf: text)
                material.append(10)
            }
            if complete { return Hex.encode(Crypto.sha256(material)) }
        }
        return Hex.encode(Crypto.sha256(body))
    }

    private func accepted(_ status: String, id: String, requestId: String) -> Response {
        var body: [UInt8] = Array("{\"status\":\"\(status)\",\"id\":".utf8)
        JSONText.appendString(id, to: &body)
        body.append(UInt8(ascii: "}"))
        return Response(status: 200, body: body, outcome: status, id: id, requestId: requestId)
    }

    private func accept(
        body: [UInt8], payload: Payload, key: String, expiresAt: Int64, request: IncomingRequest, requestId: String,
        nowMicros: Int64, deadline: Deadline
    ) -> Response {
        let store = spool.lockStore
        let marker: HeldMarker
        do throws(LockStoreError) {
            marker = try store.acquire(key: key, deadline: deadline, nowSeconds: nowMicros / 1_000_000)
        } catch {
            switch error {
            case .timedOut:
                return errorResponse(
                    503, "unavailable", "event could not be stored in time; retry later", requestId: requestId,
                    detail: "dedupe lock wait passed the ack deadline")
            case .system(let e):
                return errorResponse(
                    503, "unavailable", "event could not be stored; retry later", requestId: requestId,
                    detail: e.description)
            }
        }
        defer { store.release(marker) }
        switch marker.state {
        case .committed(let id, _), .handled(let id, _):
            return accepted("duplicate", id: id, requestId: requestId)
        case .inProgress(let spoolPath):
            // A writer died holding this key. If its file made it into the spool,
            // that delivery counts; finish its bookkeeping instead of writing twice.
            let id = String(spoolPath.split(separator: "/").last ?? "")
            if !id.isEmpty && (spool.exists(spoolPath) || spool.exists("cur/" + id)) {
                do {
                    try store.markCommitted(marker, id: id, expiresAt: expiresAt)
                } catch {
                    return errorResponse(
                        503, "unavailable", "event could not be stored; retry later", requestId: requestId,
                        detail: "\(error)")
                }
                return accepted("duplicate", id: id, requestId: requestId)
            }
        case .absent:
            break
        }
        let id = Spool.newId(receivedAtMicros: nowMicros)
        let waiting = Spool.waitingPath(id: id, receivedAtMicros: nowMicros)
        var headers: [(name: String, value: String)] = []
        if let s = request.signature { headers.append(("x-webhook-signature", s)) }
        if let s = request.contentType { headers.append(("content-type", s)) }
        if let s = request.userAgent { headers.append(("user-agent", s)) }
        let record = SpoolRecord(
            id: id, key: key, event: payload.event, receivedAtMicros: nowMicros, remoteAddr: request.remoteAddr,
            requestId: requestId, organizationId: payload.organizationId, entityId: payload.entityId,
            timestamp: payload.timestamp, headers: headers, body: body)
        do {
            try store.markInProgress(marker, spoolPath: waiting, nowSeconds: nowMicros / 1_000_000)
            let staged = try spool.stage(record)
            try spool.publish(staged: staged, as: waiting)
        } catch {
            store.clear(marker)
            return errorResponse(
                503, "unavailable", "event could not be stored; retry later", requestId: requestId,
                detail: "\(error)")
        }
        // The event is durable from here on. Should the C record fail, the P
        // record stays and names the published file, so a repeat delivery is
        // still recognised; answering 503 now would only invite a second copy.
        var response = accepted("accepted", id: id, requestId: requestId)
        do throws(LockStoreError) {
            try store.markCommitted(marker, id: id, expiresAt: expiresAt)
        } catch {
            response.detail = "stored, but the dedupe marker still says in progress: \(error)"
        }
        return response
    }

    enum BodyError: Error {
        case tooLarge, short(Int), long, unreadable
    }

    /// Reads the body to end of input, checking it against the declared length.
    static func readBody(_ source: inout some BodySource, declared: Int?, limit: Int) -> Result<[UInt8], BodyError> {
        // One spare byte reveals a body longer than declared (or than the limit).
        let capacity = (declared ?? limit) + 1
        var buffer = [UInt8](repeating: 0, count: declared.map { $0 + 1 } ?? min(capacity, 65536))
        var count = 0
        while true {
            if count == buffer.count {
                guard buffer.count < capacity else { break }
                buffer.append(contentsOf: [UInt8](repeating: 0, count: min(buffer.count, capacity - buffer.count)))
            }
            let n = buffer.withUnsafeMutableBytes { raw in
                source.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[count...]))
            }
            if n < 0 { return .failure(.unreadable) }
            if n == 0 { break }
            count += n
        }
        if let declared {
            if count > declared { return .failure(.long) }
            if count < declared { return .failure(.short(count)) }
        } else if count > limit {
            return .failure(.tooLarge)
        }
        buffer.removeLast(buffer.count - count)
        return .success(buffer)
    }

    /// The front end's request id if it is a short token, else a fresh one.
    static func sanitizedRequestId(_ id: String?) -> String {
        if let id, !id.isEmpty, id.utf8.count <= 64,
            id.utf8.allSatisfy({ (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) || $0 == 45 })
        {
            return id
        }
        return Hex.encode(Crypto.randomBytes(8))
    }

    /// The log fields for a response that took `latencyMilliseconds`.
    public static func logFields(_ r: Response, latencyMilliseconds: Double) -> [(String, LogValue)] {
        var fields: [(String, LogValue)] = [("request_id", .string(r.requestId)), ("status", .int(r.status))]
        fields.append(("outcome", .string(r.outcome)))
        if let e = r.event { fields.append(("event", .string(e))) }
        if let k = r.key { fields.append(("key", .string(k))) }
        if let i = r.id { fields.append(("id", .string(i))) }
        fields.append(("latency_ms", .double(latencyMilliseconds)))
        if let d = r.detail { fields.append(("detail", .string(d))) }
        return fields
    }
}
