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
        var b = Crypto.randomBytes(16)
        b[6] = b[6] & 0x0F | 0x40
        b[8] = b[8] & 0x3F | 0x80
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(36)
        for (i, byte) in b.enumerated() {
            if i == 4 || i == 6 || i == 8 || i == 10 { out.append(UInt8(ascii: "-")) }
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 15)])
        }
        return String(decoding: out, as: UTF8.self)
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
        let now = senderTimestamp(micros: nowMicros)
        let data: [(String, String)]
        if type.hasPrefix("booking.") {
            data = [
                ("id", JSONText.string(entityId)), ("orderId", JSONText.string(uuid())),
                ("start", JSONText.string(senderTimestamp(micros: nowMicros + 86_400_000_000))),
                ("end", JSONText.string(senderTimestamp(micros: nowMicros + 86_400_000_000 + 14_400_000_000))),
                ("installerName", JSONText.string("Kari Nordmann")), ("createdAt", JSONText.string(now)),
            ]
        } else if type.hasPrefix("workflow.") {
            data = [
                ("id", JSONText.string(entityId)), ("orderId", JSONText.string(uuid())),
                ("name", JSONText.string("Site survey")), ("position", String(sequence % 9 + 1)),
                ("createdAt", JSONText.string(now)),
            ]
        } else {
            let status: Int
            switch type {
            case "order.completed": status = 3
            case "order.cancelled", "order.deleted": status = 4
            case "order.dispatched", "order.assigned": status = 1
            default: status = 0
            }
            data = [
                ("id", JSONText.string(entityId)), ("displayId", JSONText.string("P1-\(sequence)")),
                ("name", JSONText.string("Solar Panel Installation")), ("status", String(status)),
                ("customerName", JSONText.string("Åse Ødegård")), ("address", JSONText.string("Storgata 1, Tromsø")),
                ("createdAt", JSONText.string(now)),
            ]
        }
        var out: [UInt8] = []
        out.reserveCapacity(512)
        out.append(contentsOf: "{\n  \"event\": ".utf8)
        JSONText.appendString(type, to: &out)
        out.append(contentsOf: ",\n  \"timestamp\": ".utf8)
        JSONText.appendString(now, to: &out)
        out.append(contentsOf: ",\n  \"organizationId\": ".utf8)
        JSONText.appendString(organizationId, to: &out)
        out.append(contentsOf: ",\n  \"data\": {\n".utf8)
        for (i, field) in data.enumerated() {
            out.append(contentsOf: "    ".utf8)
            JSONText.appendString(field.0, to: &out)
            out.append(contentsOf: ": ".utf8)
            out.append(contentsOf: field.1.utf8)
            out.append(contentsOf: (i + 1 < data.count ? ",\n" : "\n").utf8)
        }
        out.append(contentsOf: "  }\n}\n".utf8)
        return out
    }
}
