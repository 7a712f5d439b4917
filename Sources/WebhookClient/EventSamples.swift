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
        let h = Array(Hex.encode(b))
        return String(h[0..<8]) + "-" + String(h[8..<12]) + "-" + String(h[12..<16]) + "-" + String(h[16..<20]) + "-"
            + String(h[20..<32])
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
        var text = "{\n  \"event\": \(JSONText.string(type)),\n  \"timestamp\": \(JSONText.string(now)),\n"
        text += "  \"organizationId\": \(JSONText.string(organizationId)),\n  \"data\": {\n"
        text += data.map { "    \(JSONText.string($0.0)): \($0.1)" }.joined(separator: ",\n")
        text += "\n  }\n}\n"
        return Array(text.utf8)
    }
}
