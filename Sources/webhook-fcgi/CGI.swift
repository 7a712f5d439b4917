// Plain CGI: one request from the environment and stdin, answered on stdout.
// libfcgi's accept has no CGI fallback, so this path does not use it at all.
import Glibc
import WebhookCore

struct FileDescriptorBody: BodySource {
    let fd: Int32

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n < 0 && errno == EINTR { continue }
            return n
        }
    }
}

func serveCGI(receiver: Receiver, logger: Logger) -> Int32 {
    let started = monotonicNanos()
    func env(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
    let request = IncomingRequest(
        method: env("REQUEST_METHOD") ?? "", contentLength: env("CONTENT_LENGTH"),
        signature: env("HTTP_X_WEBHOOK_SIGNATURE"), contentType: env("CONTENT_TYPE"),
        userAgent: env("HTTP_USER_AGENT"), remoteAddr: env("REMOTE_ADDR") ?? "",
        requestId: env("REQUEST_ID") ?? env("HTTP_X_REQUEST_ID"), endpoint: env("WEBHOOK_ENDPOINT"))
    var body = FileDescriptorBody(fd: 0)
    let response = receiver.handle(request, body: &body)
    let bytes = response.cgiBytes()
    var offset = 0
    var ok = true
    bytes.withUnsafeBytes { raw in
        while offset < raw.count {
            let n = write(1, raw.baseAddress! + offset, raw.count - offset)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                ok = false
                return
            }
            offset += n
        }
    }
    if ok && !response.isWorthLogging { return 0 }
    var fields = Receiver.logFields(response, latencyMilliseconds: Double(monotonicNanos() - started) / 1e6)
    fields.append(("mode", .string("cgi")))
    if !ok { fields.append(("write_error", .string(String(cString: strerror(errno))))) }
    logger.log(response.status < 500 ? "info" : "error", "request", fields)
    return ok ? 0 : 1
}
