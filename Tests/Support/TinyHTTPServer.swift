// A minimal HTTP/1.1 server on loopback for tests that need a peer: it records
// each request and answers with a status the test chooses.
import Foundation
import Glibc

/// A request as the server saw it.
public struct ReceivedRequest: Sendable {
    /// Method and path.
    public var method: String
    public var path: String
    /// Header names lower-cased.
    public var headers: [String: String]
    /// The body.
    public var body: [UInt8]
}

/// Serves on 127.0.0.1 on a free port until ``stop()``.
public final class TinyHTTPServer: @unchecked Sendable {
    /// The port.
    public private(set) var port: Int = 0
    private let listenFd: Int32
    private let lock = NSLock()
    private var received: [ReceivedRequest] = []
    private var statusToSend: Int
    private var stopped = false
    private var delayMicros: UInt32 = 0
    private var stallAfter: Int? = nil
    private var stallMicros: UInt64 = 0
    private var stallUntil: Date? = nil

    /// Starts answering every request with `status`.
    public init(status: Int = 200) throws {
        statusToSend = status
        listenFd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(listenFd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listenFd, $0, length) }
        }
        guard bound == 0, listen(listenFd, 64) == 0 else { throw POSIXError(.EADDRINUSE) }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listenFd, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread { [self] in acceptLoop() }.start()
    }

    /// `http://127.0.0.1:PORT/path`.
    public func url(_ path: String = "/hook") -> String { "http://127.0.0.1:\(port)\(path)" }

    /// Changes the status later requests get.
    public func answer(_ status: Int) { lock.withLock { statusToSend = status } }

    /// Delays every answer by `milliseconds`.
    public func delay(milliseconds: Int) { lock.withLock { delayMicros = UInt32(milliseconds * 1000) } }

    /// Once `requests` requests have arrived, holds every answer (on every
    /// connection) until `milliseconds` have passed: the whole server stalls.
    public func stall(afterRequests requests: Int, milliseconds: Int) {
        lock.withLock {
            stallAfter = requests
            stallMicros = UInt64(milliseconds) * 1000
        }
    }

    /// Requests so far.
    public var requests: [ReceivedRequest] { lock.withLock { received } }

    /// Stops accepting.
    public func stop() {
        lock.withLock { stopped = true }
        shutdown(listenFd, Int32(SHUT_RDWR))
        close(listenFd)
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listenFd, nil, nil)
            if fd < 0 {
                if lock.withLock({ stopped }) { return }
                if errno == EINTR { continue }
                return
            }
            Thread { [self] in serve(fd) }.start()
        }
    }

    private func serve(_ fd: Int32) {
        defer { close(fd) }
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        func fill() -> Bool {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return false }
            buffer.append(contentsOf: chunk[0..<n])
            return true
        }
        while true {
            var headerEnd: Int? = nil
            while headerEnd == nil {
                if let r = buffer.firstRange(of: [13, 10, 13, 10]) { headerEnd = r.lowerBound } else if !fill() { return }
            }
            let head = String(decoding: buffer[0..<headerEnd!], as: UTF8.self).components(separatedBy: "\r\n")
            buffer.removeFirst(headerEnd! + 4)
            let requestLine = head[0].split(separator: " ")
            var headers: [String: String] = [:]
            for line in head.dropFirst() {
                if let colon = line.firstIndex(of: ":") {
                    headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                }
            }
            let length = Int(headers["content-length"] ?? "0") ?? 0
            while buffer.count < length { if !fill() { return } }
            let body = Array(buffer[0..<length])
            buffer.removeFirst(length)
            let (status, delay, holdUntil) = lock.withLock { () -> (Int, UInt32, Date?) in
                received.append(ReceivedRequest(
                    method: String(requestLine.first ?? ""), path: String(requestLine.dropFirst().first ?? ""),
                    headers: headers, body: body))
                if let after = stallAfter, received.count >= after, stallUntil == nil {
                    stallUntil = Date().addingTimeInterval(Double(stallMicros) / 1e6)
                }
                return (statusToSend, delayMicros, stallUntil)
            }
            if let holdUntil, holdUntil > Date() { usleep(UInt32(holdUntil.timeIntervalSinceNow * 1e6)) }
            if delay > 0 { usleep(delay) }
            let reply = Array("HTTP/1.1 \(status) X\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok".utf8)
            _ = reply.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
    }
}
