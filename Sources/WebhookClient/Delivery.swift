// Signing and sending one delivery the way the sender does.
public import WebhookCore

/// Sends signed deliveries.
public struct Deliverer {
    /// The endpoint.
    public let url: HTTPURL
    /// Signs with the first secret of the secret file, as the sender signs.
    public let verifier: SignatureVerifier

    /// A deliverer to `url` signing with `secrets[0]`.
    public init(url: HTTPURL, secrets: [[UInt8]]) {
        self.url = url
        self.verifier = SignatureVerifier(secrets: secrets)
    }

    /// The headers every delivery carries besides Host, Content-Length and
    /// X-Webhook-Signature's value, as the sender sends them.
    private static let fixedLines = Array(
        "Content-Type: application/json\r\nUser-Agent: installer-webhooks-loadtest/\(installerWebhooksVersion)\r\nX-Webhook-Signature: ".utf8)

    /// POSTs `body`, signed, on `connection`.
    public func send(_ body: [UInt8], on connection: HTTPConnection, timeoutMilliseconds: Int = 10_000) throws(HTTPError)
        -> HTTPResponse
    {
        var lines = Self.fixedLines
        lines.append(contentsOf: verifier.sign(body).utf8)
        lines.append(contentsOf: "\r\n".utf8)
        return try connection.send(method: "POST", headerLines: lines, body: body, timeoutMilliseconds: timeoutMilliseconds)
    }
}
