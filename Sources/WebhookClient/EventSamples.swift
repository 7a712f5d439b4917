// Sample events of the twelve types the sender documents, shaped like its
// payload example, with fresh ids and timestamps so each one is a new event.
public import WebhookCore

/// Builds realistic event payloads.
public enum EventSamples {
    /// The event types of the sender's reference.
    public static let types = [
        "order.created", "order.updated", "order.completed", "order.cancelled", "order.deleted", "order.dispatched",
        "order.assigned", "booking.created", "booking.updated", "booking.cancelled", "workflow.step.completed",
        "workflow.step.activated",
    ]

    /// A random version-4 UUID.
    public static func uuid() -> String {
        var rng = FastRandom()
        var out: [UInt8] = []
        appendUUID(to: &out, using: &rng)
        return String(decoding: out, as: UTF8.self)
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// Appends a random version-4 UUID's 36 characters to `out`.
    static func appendUUID(to out: inout [UInt8], using rng: inout FastRandom) {
        let hi = rng.next()
        let lo = rng.next()
        for i in 0..<16 {
            var byte = UInt8(truncatingIfNeeded: (i < 8 ? hi : lo) >> UInt64((i % 8) * 8))
            if i == 6 { byte = byte & 0x0F | 0x40 }
            if i == 8 { byte = byte & 0x3F | 0x80 }
            if i == 4 || i == 6 || i == 8 || i == 10 { out.append(UInt8(ascii: "-")) }
            out.append(hexDigits[Int(byte >> 4)])
            out.append(hexDigits[Int(byte & 15)])
        }
    }

    /// RFC 3339 with whole seconds, as the sender writes it.
    public static func senderTimestamp(micros: Int64) -> String {
        String(Timestamp.format(micros: micros).prefix(19)) + "Z"
    }

    /// A payload for `type` (any string; unknown types get the order shape),
    /// about `entityId` in `organizationId`, stamped `nowMicros`.
    public static func payload(
        type: String, organizationId: String = uuid(), entityId: String = uuid(), sequence: Int = 1,
        nowMicros: Int64 = WallClock.system.nowMicros()
    ) -> [UInt8] {
        var factory = EventFactory()
        return factory.payload(type: type, organizationId: organizationId, entityId: entityId, sequence: sequence, nowMicros: nowMicros)
    }
}

/// A fast generator for load (xoshiro256**), seeded from libcrypto: ids must be
/// unique, not secret, and drawing them must not cost a system call each.
public struct FastRandom: RandomNumberGenerator {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    /// A generator seeded with 256 random bits.
    public init() {
        let seed = Crypto.randomBytes(32)
        func word(_ i: Int) -> UInt64 { (0..<8).reduce(0) { $0 << 8 | UInt64(seed[i * 8 + $1]) } }
        s = (word(0), word(1), word(2), word(3) | 1)
    }

    public mutating func next() -> UInt64 {
        let result = (s.1 &* 5).rotatedLeft(7) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3.rotatedLeft(45)
        return result
    }
}

extension UInt64 {
    fileprivate func rotatedLeft(_ k: UInt64) -> UInt64 { self << k | self >> (64 - k) }
}

/// Builds sample payloads fast, for one thread: its own generator, and the
/// timestamps formatted once per second rather than per event.
public struct EventFactory {
    /// The generator ids and choices are drawn from.
    public var rng = FastRandom()
    private var second: Int64 = -1
    private var now: [UInt8] = []
    private var start: [UInt8] = []
    private var end: [UInt8] = []

    /// A factory with a freshly seeded generator.
    public init() {}

    private mutating func stamp(_ nowMicros: Int64) {
        let s = nowMicros / 1_000_000
        guard s != second else { return }
        second = s
        func quoted(_ micros: Int64) -> [UInt8] {
            var out: [UInt8] = []
            JSONText.appendString(EventSamples.senderTimestamp(micros: micros), to: &out)
            return out
        }
        now = quoted(nowMicros)
        start = quoted(nowMicros + 86_400_000_000)
        end = quoted(nowMicros + 86_400_000_000 + 14_400_000_000)
    }

    private mutating func appendQuotedUUID(_ out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        EventSamples.appendUUID(to: &out, using: &rng)
        out.append(UInt8(ascii: "\""))
    }

    /// A payload as ``EventSamples/payload(type:organizationId:entityId:sequence:nowMicros:)``
    /// builds it; nil ids are drawn fresh.
    public mutating func payload(
        type: String, organizationId: String? = nil, entityId: String? = nil, sequence: Int = 1,
        nowMicros: Int64 = WallClock.system.nowMicros()
    ) -> [UInt8] {
        stamp(nowMicros)
        var out: [UInt8] = []
        out.reserveCapacity(768)
        func field(_ name: String, _ out: inout [UInt8]) {
            out.append(contentsOf: "    \"".utf8)
            out.append(contentsOf: name.utf8)
            out.append(contentsOf: "\": ".utf8)
        }
        out.append(contentsOf: "{\n  \"event\": ".utf8)
        JSONText.appendString(type, to: &out)
        out.append(contentsOf: ",\n  \"timestamp\": ".utf8)
        out.append(contentsOf: now)
        out.append(contentsOf: ",\n  \"organizationId\": ".utf8)
        if let organizationId { JSONText.appendString(organizationId, to: &out) } else { appendQuotedUUID(&out) }
        out.append(contentsOf: ",\n  \"data\": {\n".utf8)
        field("id", &out)
        if let entityId { JSONText.appendString(entityId, to: &out) } else { appendQuotedUUID(&out) }
        out.append(contentsOf: ",\n".utf8)
        if type.hasPrefix("booking.") {
            field("orderId", &out)
            appendQuotedUUID(&out)
            out.append(contentsOf: ",\n".utf8)
            field("start", &out)
            out.append(contentsOf: start)
            out.append(contentsOf: ",\n".utf8)
            field("end", &out)
            out.append(contentsOf: end)
            out.append(contentsOf: ",\n".utf8)
            field("installerName", &out)
            out.append(contentsOf: "\"Kari Nordmann\",\n".utf8)
        } else if type.hasPrefix("workflow.") {
            field("orderId", &out)
            appendQuotedUUID(&out)
            out.append(contentsOf: ",\n".utf8)
            field("name", &out)
            out.append(contentsOf: "\"Site survey\",\n".utf8)
            field("position", &out)
            out.append(contentsOf: String(sequence % 9 + 1).utf8)
            out.append(contentsOf: ",\n".utf8)
        } else {
            let status: Int
            switch type {
            case "order.completed": status = 3
            case "order.cancelled", "order.deleted": status = 4
            case "order.dispatched", "order.assigned": status = 1
            default: status = 0
            }
            field("displayId", &out)
            out.append(contentsOf: "\"P1-".utf8)
            out.append(contentsOf: String(sequence).utf8)
            out.append(contentsOf: "\",\n".utf8)
            field("name", &out)
            out.append(contentsOf: "\"Solar Panel Installation\",\n".utf8)
            field("status", &out)
            out.append(contentsOf: String(status).utf8)
            out.append(contentsOf: ",\n".utf8)
            field("customerName", &out)
            out.append(contentsOf: "\"Åse Ødegård\",\n".utf8)
            field("address", &out)
            out.append(contentsOf: "\"Storgata 1, Tromsø\",\n".utf8)
        }
        field("createdAt", &out)
        out.append(contentsOf: now)
        out.append(contentsOf: "\n  }\n}\n".utf8)
        return out
    }
}
