// Hostile requests through nginx: each gets the status the contract gives it,
// and the handler keeps serving.
import Foundation
import Glibc
import Testing
import WebhookClient
import WebhookCore
import WebhookTestSupport

/// Sends raw bytes to 127.0.0.1:`port` and returns the status line's code, or 0 without an answer.
func rawExchange(port: Int, _ bytes: [UInt8], closeWrite: Bool = false) -> Int {
    guard let fd = connectLoopback(port) else { return -1 }
    defer { close(fd) }
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    if closeWrite { shutdown(fd, Int32(SHUT_WR)) }
    var reply = [UInt8](repeating: 0, count: 4096)
    let n = reply.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
    guard n > 12 else { return 0 }
    return Int(String(decoding: reply[9..<12], as: UTF8.self)) ?? 0
}

struct HostileCase: Sendable, CustomTestStringConvertible {
    let name: String
    let status: Int
    let request: @Sendable (_ stack: ReceiverStack) throws -> Int
    var testDescription: String { name }
}

func signedPost(_ stack: ReceiverStack, _ body: [UInt8], signature: String? = nil, extraHeaders: [(String, String)] = [])
    throws -> Int
{
    let sig = signature ?? stack.deliverer.verifier.sign(body)
    return try stack.post(body, headers: [("X-Webhook-Signature", sig), ("Content-Type", "application/json")] + extraHeaders).status
}

func envelope(_ inner: String) -> [UInt8] {
    Array("{\"event\":\"order.created\",\"timestamp\":\"\(EventSamples.senderTimestamp(micros: WallClock.system.nowMicros()))\",\(inner)}".utf8)
}

let hostileCases: [HostileCase] = [
    HostileCase(name: "PUT", status: 405) { try HTTPConnection(url: HTTPURL($0.url)!).send(method: "PUT", body: [1]).status },
    HostileCase(name: "DELETE", status: 405) { try HTTPConnection(url: HTTPURL($0.url)!).send(method: "DELETE").status },
    HostileCase(name: "body over the limit", status: 413) { try signedPost($0, [UInt8](repeating: 32, count: 1_100_000)) },
    HostileCase(name: "no signature", status: 401) { try $0.post(envelope("\"a\":1"), headers: []).status },
    HostileCase(name: "empty signature header", status: 401) { try signedPost($0, envelope("\"a\":1"), signature: "") },
    HostileCase(name: "non-hex signature", status: 401) { try signedPost($0, envelope("\"a\":1"), signature: "sha256=" + String(repeating: "x", count: 64)) },
    HostileCase(name: "63 hex digits", status: 401) { s in
        let b = envelope("\"a\":2")
        return try signedPost(s, b, signature: String(s.deliverer.verifier.sign(b).dropLast()))
    },
    HostileCase(name: "65 hex digits", status: 401) { s in
        let b = envelope("\"a\":3")
        return try signedPost(s, b, signature: s.deliverer.verifier.sign(b) + "0")
    },
    HostileCase(name: "many headers", status: 200) { s in
        try signedPost(s, envelope("\"a\":4"), extraHeaders: (0..<60).map { ("X-Filler-\($0)", String(repeating: "v", count: 40)) })
    },
    HostileCase(name: "NUL bytes outside strings", status: 400) { try signedPost($0, envelope("\"a\":1") + [0, 0]) },
    HostileCase(name: "NUL escaped in a string", status: 200) { try signedPost($0, envelope("\"a\":\"x\\u0000y\"")) },
    HostileCase(name: "invalid UTF-8", status: 400) { try signedPost($0, Array("{\"event\":\"order.created\",\"a\":\"".utf8) + [0xC3, 0x28] + Array("\"}".utf8)) },
    HostileCase(name: "deeply nested", status: 400) { try signedPost($0, envelope("\"a\":" + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000))) },
    HostileCase(name: "nested within the cap", status: 200) { try signedPost($0, envelope("\"a\":" + String(repeating: "[", count: 300) + String(repeating: "]", count: 300))) },
    HostileCase(name: "string of 1 MiB", status: 413) { try signedPost($0, envelope("\"a\":\"" + String(repeating: "z", count: 1 << 20) + "\"")) },
    HostileCase(name: "string of 900 KB", status: 200) { try signedPost($0, envelope("\"a\":\"" + String(repeating: "z", count: 900_000) + "\"")) },
    HostileCase(name: "numbers out of range", status: 200) { try signedPost($0, envelope("\"a\":1e999999,\"b\":-123456789012345678901234567890")) },
    HostileCase(name: "event not a string", status: 400) { try signedPost($0, Array("{\"event\":[\"order.created\"]}".utf8)) },
    HostileCase(name: "duplicate event key", status: 400) { try signedPost($0, Array("{\"event\":\"order.created\",\"event\":\"order.deleted\"}".utf8)) },
    HostileCase(name: "top-level array", status: 400) { try signedPost($0, Array("[{\"event\":\"order.created\"}]".utf8)) },
    HostileCase(name: "empty body", status: 400) { try signedPost($0, []) },
    HostileCase(name: "odd Content-Length", status: 400) { s in
        rawExchange(port: s.port, Array("POST /webhooks/installer HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n".utf8))
    },
    HostileCase(name: "truncated body", status: 0) { s in
        // The client goes away mid-body: nginx never passes it on, and answers nothing.
        rawExchange(port: s.port, Array("POST /webhooks/installer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"event\"".utf8), closeWrite: true)
    },
]

@Suite(.serialized) struct HostileInputTests {
    @Test func everyHostileRequestGetsItsStatusAndTheHandlerKeepsServing() throws {
        let stack = try ReceiverStack()
        defer { stack.stop() }
        for c in hostileCases {
            let status = try c.request(stack)
            #expect(status == c.status, "\(c.name): got \(status), expected \(c.status)")
            #expect(stack.handler?.isRunning == true, "the handler died on \(c.name)")
        }
        let ok = try stack.deliver(EventSamples.payload(type: "order.created"))
        #expect(ok.status == 200)
        #expect(!stack.handlerLog.contains(stack.secrets[0]))
    }
}
