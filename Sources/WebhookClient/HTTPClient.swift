// A small blocking HTTP/1.1 client on POSIX sockets: one connection, kept
// alive across requests, with a deadline per request. It speaks plain http://
// only; the receive endpoint is reached through the host's nginx or loopback.
import Glibc
import WebhookCore

/// An `http://host:port/path` address.
public struct HTTPURL: Sendable, Equatable {
    /// Host name or address literal (IPv6 without brackets).
    public var host: String
    /// TCP port.
    public var port: UInt16
    /// Path and query, starting with `/`.
    public var path: String

    /// Parses `http://host[:port][/path]`; nil for anything else.
    public init?(_ text: String) {
        guard text.hasPrefix("http://") else { return nil }
        var rest = Substring(text.dropFirst(7))
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        path = slash == rest.endIndex ? "/" : String(rest[slash...])
        rest = rest[..<slash]
        var portText: Substring? = nil
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { return nil }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            portText = rest[rest.index(after: colon)...]
        } else {
            host = String(rest)
        }
        guard !host.isEmpty else { return nil }
        if let portText {
            guard let p = UInt16(portText), p > 0 else { return nil }
            port = p
        } else {
            port = 80
        }
    }

    /// The Host header value.
    public var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port == 80 ? h : "\(h):\(port)"
    }
}

/// A response as received.
public struct HTTPResponse: Sendable {
    /// Status code.
    public var status: Int
    /// The header lines as received (without the status line and the blank line).
    public var head: [UInt8]
    /// The body.
    public var body: [UInt8]

    /// A response with `status`, header lines `head` (CRLF-separated) and `body`.
    public init(status: Int, head: [UInt8], body: [UInt8]) {
        self.status = status
        self.head = head
        self.body = body
    }

    /// Headers, names lower-cased, values trimmed, in order.
    public var headers: [(name: String, value: String)] {
        var out: [(name: String, value: String)] = []
        for line in head.split(separator: 10) {
            var line = line[...]
            if line.last == 13 { line = line.dropLast() }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
            var value = line[(colon + 1)...]
            while let f = value.first, f == 32 || f == 9 { value = value.dropFirst() }
            while let l = value.last, l == 32 || l == 9 { value = value.dropLast() }
            let name = line[..<colon].map { (65...90).contains($0) ? $0 | 0x20 : $0 }
            out.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
        return out
    }

    /// The first header named `name` (lower-case).
    public func header(_ name: String) -> String? {
        headers.first(where: { $0.name == name })?.value
    }

    /// The body as UTF-8 text.
    public var text: String { String(decoding: body, as: UTF8.self) }
}

/// Why a request got no response.
public enum HTTPError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Name resolution or connect failed.
    case connect(String)
    /// No complete response before the deadline.
    case timeout
    /// The connection broke or the peer sent something that is not HTTP.
    case transport(String)

    public var description: String {
        switch self {
        case .connect(let s): return "connect: \(s)"
        case .timeout: return "timed out"
        case .transport(let s): return "transport: \(s)"
        }
    }
}

/// One keep-alive connection to one server.
public final class HTTPConnection {
    /// The server.
    public let url: HTTPURL
    private var fd: Int32 = -1
    /// Bytes received and not yet consumed are `buffer[start..<buffer.count]`.
    private var buffer: [UInt8] = []
    private var start = 0
    private var chunk = [UInt8](repeating: 0, count: 65536)
    /// The per-call socket timeout in force, so a request with the same
    /// timeout as the last costs no setsockopt.
    private var appliedTimeoutMilliseconds = 0

    /// The last request's bytes, kept for their capacity.
    private var requestBuffer: [UInt8] = []
    /// The Host header line, made once.
    private let hostLine: [UInt8]

    /// A connection to `url`'s host; it connects on first use.
    public init(url: HTTPURL) {
        self.url = url
        hostLine = Array(" HTTP/1.1\r\nHost: \(url.hostHeader)\r\n".utf8)
    }

    deinit { close() }

    /// Closes the socket; the next request reconnects.
    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        buffer.removeAll(keepingCapacity: true)
        start = 0
    }

    private func connect(deadline: Deadline) throws(HTTPError) {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(url.host, String(url.port), &hints, &list)
        guard rc == 0, let first = list else { throw .connect("cannot resolve \(url.host)") }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let a = entry {
            entry = a.pointee.ai_next
            let s = socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
            if s < 0 { continue }
            var one: Int32 = 1
            setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            setTimeout(s, max(deadline.remainingNanos, 1_000_000))
            if Glibc.connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 {
                fd = s
                appliedTimeoutMilliseconds = 0
                return
            }
            lastError = String(cString: strerror(errno))
            Glibc.close(s)
        }
        throw .connect("\(url.hostHeader): \(lastError)")
    }

    private func setTimeout(_ s: Int32, _ ns: UInt64) {
        var tv = timeval(tv_sec: Int(ns / 1_000_000_000), tv_usec: Int(ns % 1_000_000_000 / 1000))
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sends one request and reads its response. A connection the server closed
    /// while idle is reopened once, before anything of the request was answered.
    public func send(
        method: String, path: String? = nil, headers: [(String, String)] = [], body: [UInt8] = [],
        timeoutMilliseconds: Int = 10_000
    ) throws(HTTPError) -> HTTPResponse {
        var lines: [UInt8] = []
        for (name, value) in headers {
            lines.append(contentsOf: name.utf8)
            lines.append(contentsOf: ": ".utf8)
            lines.append(contentsOf: value.utf8)
            lines.append(contentsOf: "\r\n".utf8)
        }
        return try send(method: method, path: path, headerLines: lines, body: body, timeoutMilliseconds: timeoutMilliseconds)
    }

    /// Sends one request whose header lines (each ending in CRLF, without
    /// Host and Content-Length) are already formatted.
    public func send(
        method: String, path: String? = nil, headerLines: [UInt8], body: [UInt8] = [], timeoutMilliseconds: Int = 10_000
    ) throws(HTTPError) -> HTTPResponse {
        let deadline = Deadline(millisecondsFromNow: timeoutMilliseconds)
        var request = requestBuffer
        requestBuffer = []
        defer { requestBuffer = request }
        request.removeAll(keepingCapacity: true)
        request.reserveCapacity(256 + body.count)
        request.append(contentsOf: method.utf8)
        request.append(32)
        request.append(contentsOf: (path ?? url.path).utf8)
        request.append(contentsOf: hostLine)
        request.append(contentsOf: headerLines)
        if !body.isEmpty || method == "POST" || method == "PUT" {
            request.append(contentsOf: "Content-Length: ".utf8)
            request.append(contentsOf: String(body.count).utf8)
            request.append(contentsOf: "\r\n".utf8)
        }
        request.append(contentsOf: "\r\n".utf8)
        request.append(contentsOf: body)
        let reused = fd >= 0
        do {
            return try attempt(request, deadline: deadline, timeoutMilliseconds: timeoutMilliseconds, isHead: method == "HEAD")
        } catch .transport where reused {
            close()
            return try attempt(request, deadline: deadline, timeoutMilliseconds: timeoutMilliseconds, isHead: method == "HEAD")
        }
    }

    private func attempt(_ request: [UInt8], deadline: Deadline, timeoutMilliseconds: Int, isHead: Bool) throws(HTTPError)
        -> HTTPResponse
    {
        if fd < 0 { try connect(deadline: deadline) }
        // Each send and recv waits at most the request's whole timeout, and
        // the deadline is checked between them, so a server that trickles
        // bytes is cut off within two timeouts; one that goes silent, within one.
        if timeoutMilliseconds != appliedTimeoutMilliseconds {
            setTimeout(fd, UInt64(max(timeoutMilliseconds, 1)) * 1_000_000)
            appliedTimeoutMilliseconds = timeoutMilliseconds
        }
        do {
            try writeAll(request)
            return try readResponse(deadline: deadline, isHead: isHead)
        } catch {
            close()
            throw error
        }
    }

    private func writeAll(_ bytes: [UInt8]) throws(HTTPError) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw .timeout }
                throw .transport(String(cString: strerror(errno)))
            }
            offset += n
        }
    }

    private var available: Int { buffer.count - start }

    /// Reads more bytes into the buffer; false at end of stream.
    private func fill(_ deadline: Deadline) throws(HTTPError) -> Bool {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        while true {
            if deadline.hasPassed { throw .timeout }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                buffer.append(contentsOf: chunk[0..<n])
                return true
            }
            if n == 0 { return false }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { throw .timeout }
            throw .transport(String(cString: strerror(errno)))
        }
    }

    private func take(_ count: Int) -> [UInt8] {
        let out = Array(buffer[start..<(start + count)])
        start += count
        return out
    }

    private func readLine(_ deadline: Deadline) throws(HTTPError) -> [UInt8] {
        while true {
            if let i = buffer[start...].firstIndex(of: 10) {
                var line = take(i + 1 - start)
                line.removeLast()
                if line.last == 13 { line.removeLast() }
                return line
            }
            guard available < 65536 else { throw .transport("header line too long") }
            guard try fill(deadline) else { throw .transport("connection closed mid-response") }
        }
    }

    /// Where the header block that starts at `start` ends (just past its
    /// blank line), reading more until it has arrived.
    private func headerEnd(_ deadline: Deadline) throws(HTTPError) -> Int {
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        var from = start
        while true {
            var i = from
            while i < buffer.count {
                if buffer[i] == 10 {
                    if i + 1 < buffer.count && buffer[i + 1] == 10 { return i + 2 }
                    if i + 2 < buffer.count && buffer[i + 1] == 13 && buffer[i + 2] == 10 { return i + 3 }
                }
                i += 1
            }
            from = max(start, buffer.count - 2)
            guard available < 65536 else { throw .transport("response head too long") }
            guard try fill(deadline) else { throw .transport("connection closed mid-response") }
        }
    }

    /// Whether `line` is the header `name` (lower-case); returns its value's range.
    private static func value(of name: StaticString, in line: ArraySlice<UInt8>) -> Range<Int>? {
        let count = name.utf8CodeUnitCount
        guard line.count > count, line[line.startIndex + count] == UInt8(ascii: ":") else { return nil }
        let matches = name.withUTF8Buffer { n in
            (0..<count).allSatisfy { k in
                let c = line[line.startIndex + k]
                return ((65...90).contains(c) ? c | 0x20 : c) == n[k]
            }
        }
        guard matches else { return nil }
        var lo = line.startIndex + count + 1
        var hi = line.endIndex
        while lo < hi, line[lo] == 32 || line[lo] == 9 { lo += 1 }
        while hi > lo, line[hi - 1] == 32 || line[hi - 1] == 9 || line[hi - 1] == 13 { hi -= 1 }
        return lo..<hi
    }

    private func readResponse(deadline: Deadline, isHead: Bool) throws(HTTPError) -> HTTPResponse {
        let end = try headerEnd(deadline)
        // "HTTP/1.x NNN reason"
        let statusEnd = buffer[start..<end].firstIndex(of: 10) ?? end
        let statusLine = buffer[start..<statusEnd]
        let s0 = start
        guard statusLine.count >= 12, statusLine.starts(with: "HTTP/1.".utf8), buffer[s0 + 8] == 32,
            let status = Self.decimal(buffer[(s0 + 9)..<(s0 + 12)]),
            statusLine.count == 12 || buffer[s0 + 12] == 32 || buffer[s0 + 12] == 13
        else {
            throw .transport("not an HTTP response: \(String(decoding: statusLine.prefix(40), as: UTF8.self))")
        }
        var contentLength: Int? = nil
        var chunked = false
        var closeAfter = false
        var lineStart = statusEnd + 1
        while lineStart < end {
            let lineEnd = buffer[lineStart..<end].firstIndex(of: 10) ?? end
            let line = buffer[lineStart..<lineEnd]
            if let r = Self.value(of: "content-length", in: line) {
                guard let n = Self.decimal(buffer[r]), r.count > 0, r.count <= 18 else { throw .transport("bad Content-Length") }
                contentLength = n
            } else if let r = Self.value(of: "transfer-encoding", in: line) {
                chunked = Self.containsChunked(buffer[r])
            } else if let r = Self.value(of: "connection", in: line) {
                closeAfter = buffer[r].map { (65...90).contains($0) ? $0 | 0x20 : $0 }.elementsEqual("close".utf8)
            } else if !line.isEmpty && line != [13] && !line.contains(UInt8(ascii: ":")) {
                throw .transport("malformed header")
            }
            lineStart = lineEnd + 1
        }
        let head = Array(buffer[min(statusEnd + 1, end)..<end])
        start = end
        var body: [UInt8] = []
        if isHead || status == 204 || status == 304 || (100..<200).contains(status) {
            // no body
        } else if chunked {
            while true {
                let sizeLine = String(decoding: try readLine(deadline), as: UTF8.self)
                guard let size = Int(sizeLine.split(separator: ";").first ?? "", radix: 16) else {
                    throw .transport("bad chunk size")
                }
                if size == 0 {
                    while try !readLine(deadline).isEmpty {}
                    break
                }
                while available < size + 2 {
                    guard try fill(deadline) else { throw .transport("connection closed mid-body") }
                }
                body.append(contentsOf: take(size))
                _ = take(2)
            }
        } else if let length = contentLength {
            while available < length {
                guard try fill(deadline) else { throw .transport("connection closed mid-body") }
            }
            body = take(length)
        } else {
            while try fill(deadline) {}
            body = take(available)
            close()
        }
        if closeAfter { close() }
        return HTTPResponse(status: status, head: head, body: body)
    }

    private static func decimal(_ digits: ArraySlice<UInt8>) -> Int? {
        var n = 0
        for d in digits {
            guard (48...57).contains(d) else { return nil }
            n = n * 10 + Int(d - 48)
        }
        return n
    }

    private static func containsChunked(_ coding: ArraySlice<UInt8>) -> Bool {
        let bytes = coding.map { (65...90).contains($0) ? $0 | 0x20 : $0 }
        let word = Array("chunked".utf8)
        guard bytes.count >= word.count else { return false }
        return (0...(bytes.count - word.count)).contains { bytes[$0..<($0 + word.count)].elementsEqual(word) }
    }
}
