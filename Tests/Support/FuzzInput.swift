// How fuzzer input bytes become a request, and what every answer must satisfy.
// Shared by the libFuzzer target (scripts/fuzz, which compiles this file with
// the WebhookCore sources and -D FUZZ_STANDALONE) and the test that replays
// the inputs kept in Fixtures/fuzz-regressions.
#if !FUZZ_STANDALONE
public import WebhookCore
#endif

/// The fuzz secret.
public let fuzzSecret = Array("whsec-fuzz".utf8)

/// Statuses the contract allows.
public let fuzzAllowedStatuses: Set<Int> = [200, 400, 401, 405, 413, 503]

/// Reads input as: a mode byte, then the body (mode 0: validly signed), the
/// signature header line then the body (1), eight bytes of CONTENT_LENGTH then
/// the body (2), or a method of four bytes then the body (3).
public func fuzzRequest(_ input: [UInt8]) -> (IncomingRequest, [UInt8])? {
    guard let mode = input.first else { return nil }
    var body = Array(input.dropFirst())
    var signature: String? = nil
    var length: String? = nil
    var method = "POST"
    switch mode & 3 {
    case 1:
        if let cut = body.firstIndex(of: 10) {
            signature = String(decoding: body[..<cut], as: UTF8.self)
            body = Array(body[(cut + 1)...])
        }
    case 2:
        length = String(decoding: body.prefix(8), as: UTF8.self)
        body = Array(body.dropFirst(min(8, body.count)))
    case 3:
        method = String(decoding: body.prefix(4), as: UTF8.self)
    default:
        break
    }
    if signature == nil { signature = SignatureVerifier(secrets: [fuzzSecret]).sign(body) }
    if length == nil { length = String(body.count) }
    return (IncomingRequest(method: method, contentLength: length, signature: signature), body)
}

/// Why an answer breaks the contract, or nil when it keeps it.
public func fuzzViolation(_ response: Response) -> String? {
    if !fuzzAllowedStatuses.contains(response.status) { return "status \(response.status) is not in the table" }
    if response.status == 200 && response.id == nil { return "a 200 without an id" }
    if response.status == 405 && !response.headers.contains(where: { $0.0 == "Allow" }) { return "405 without Allow" }
    if response.status == 503 && !response.headers.contains(where: { $0.0 == "Retry-After" }) { return "503 without Retry-After" }
    return nil
}
