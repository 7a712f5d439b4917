// The on-disk form of one accepted event: a short header block of `name: value`
// lines, a blank line, then the raw body exactly as signed. Header values are
// percent-escaped below 0x20, at 0x7F and at `%`, so no value can forge a line.

/// One accepted event with the facts recorded about its delivery.
public struct SpoolRecord: Equatable, Sendable {
    /// Format marker on the first line.
    public static let magic = "installer-webhooks-event 1"

    /// The event's id (also its file name).
    public var id: String
    /// The dedupe key it was accepted under.
    public var key: String
    /// The event type.
    public var event: String
    /// When it was accepted, microseconds since the epoch.
    public var receivedAtMicros: Int64
    /// Remote address nginx reported.
    public var remoteAddr: String
    /// The request id, shared with the access log.
    public var requestId: String
    /// `organizationId`, when present.
    public var organizationId: String?
    /// `data.id`, when present.
    public var entityId: String?
    /// The sender's `timestamp`, when present.
    public var timestamp: String?
    /// Request headers worth keeping (signature, content type, user agent), lower-case names.
    public var headers: [(name: String, value: String)]
    /// The raw body, byte for byte.
    public var body: [UInt8]

    /// Creates a record.
    public init(
        id: String, key: String, event: String, receivedAtMicros: Int64, remoteAddr: String, requestId: String,
        organizationId: String?, entityId: String?, timestamp: String?, headers: [(name: String, value: String)],
        body: [UInt8]
    ) {
        self.id = id
        self.key = key
        self.event = event
        self.receivedAtMicros = receivedAtMicros
        self.remoteAddr = remoteAddr
        self.requestId = requestId
        self.organizationId = organizationId
        self.entityId = entityId
        self.timestamp = timestamp
        self.headers = headers
        self.body = body
    }

    public static func == (a: SpoolRecord, b: SpoolRecord) -> Bool {
        a.id == b.id && a.key == b.key && a.event == b.event && a.receivedAtMicros == b.receivedAtMicros
            && a.remoteAddr == b.remoteAddr && a.requestId == b.requestId && a.organizationId == b.organizationId
            && a.entityId == b.entityId && a.timestamp == b.timestamp && a.body == b.body
            && a.headers.map(\.name) == b.headers.map(\.name) && a.headers.map(\.value) == b.headers.map(\.value)
    }

    /// The header block, ending in the blank line that precedes the body.
    public func encodedHeader() -> [UInt8] {
        var lines: [(String, String)] = [
            ("id", id), ("key", key), ("event", event), ("received-at", Timestamp.format(micros: receivedAtMicros)),
            ("received-at-us", String(receivedAtMicros)), ("remote-addr", remoteAddr), ("request-id", requestId),
        ]
        if let organizationId { lines.append(("organization-id", organizationId)) }
        if let entityId { lines.append(("entity-id", entityId)) }
        if let timestamp { lines.append(("timestamp", timestamp)) }
        for header in headers { lines.append(("header-" + header.name, header.value)) }
        lines.append(("body-length", String(body.count)))
        var out = Array(Self.magic.utf8)
        out.append(10)
        for (name, value) in lines {
            out.append(contentsOf: name.utf8)
            out.append(contentsOf: ": ".utf8)
            Self.escape(value, into: &out)
            out.append(10)
        }
        out.append(10)
        return out
    }

    static func escape(_ value: String, into out: inout [UInt8]) {
        let hex = Array("0123456789ABCDEF".utf8)
        for b in value.utf8 {
            if b < 0x20 || b == 0x7F || b == UInt8(ascii: "%") {
                out.append(UInt8(ascii: "%"))
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 15)])
            } else {
                out.append(b)
            }
        }
    }

    static func unescape(_ bytes: ArraySlice<UInt8>) -> String? {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = bytes.startIndex
        while i < bytes.endIndex {
            if bytes[i] == UInt8(ascii: "%") {
                guard i + 2 < bytes.endIndex, let v = Hex.decode(bytes[(i + 1)...(i + 2)]) else { return nil }
                out.append(v[0])
                i += 3
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Why a spool file could not be read as a record.
    public struct DecodeError: Error, Equatable, Sendable {
        /// What was wrong.
        public let reason: String

        /// Creates an error saying what was wrong.
        public init(reason: String) { self.reason = reason }
    }

    /// Parses a whole spool file.
    public static func decode(_ file: [UInt8]) throws(DecodeError) -> SpoolRecord {
        var fields: [String: String] = [:]
        var headers: [(name: String, value: String)] = []
        var i = 0
        var first = true
        while true {
            guard let end = file[i...].firstIndex(of: 10) else { throw DecodeError(reason: "header block not terminated") }
            let line = file[i..<end]
            i = end + 1
            if first {
                guard String(decoding: line, as: UTF8.self) == magic else { throw DecodeError(reason: "not a spool record") }
                first = false
                continue
            }
            if line.isEmpty { break }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon + 1 < line.endIndex,
                line[colon + 1] == 32, let value = unescape(line[(colon + 2)...])
            else { throw DecodeError(reason: "malformed header line") }
            let name = String(decoding: line[line.startIndex..<colon], as: UTF8.self)
            if name.hasPrefix("header-") {
                headers.append((String(name.dropFirst(7)), value))
            } else {
                fields[name] = value
            }
        }
        guard let id = fields["id"], let key = fields["key"], let event = fields["event"],
            let received = fields["received-at-us"].flatMap({ Int64($0) }),
            let length = fields["body-length"].flatMap({ Int($0) })
        else { throw DecodeError(reason: "required header missing") }
        guard file.count - i == length else {
            throw DecodeError(reason: "body is \(file.count - i) bytes, header says \(length)")
        }
        return SpoolRecord(
            id: id, key: key, event: event, receivedAtMicros: received, remoteAddr: fields["remote-addr"] ?? "",
            requestId: fields["request-id"] ?? "", organizationId: fields["organization-id"],
            entityId: fields["entity-id"], timestamp: fields["timestamp"], headers: headers, body: Array(file[i...]))
    }
}
