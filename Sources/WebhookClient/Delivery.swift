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

    /// The headers a real delivery of `body` carries.
    public func headers(for body: [UInt8]) -> [(String, String)] {
        [
            ("Content-Type", "application/json"), ("User-Agent", "installer-webhooks-loadtest/0.1"),
            ("X-Webhook-Signature", verifier.sign(body)),
        ]
    }

    /// POSTs `body`, signed, on `connection`.
    public func send(_ body: [UInt8], on connection: HTTPConnection, timeoutMilliseconds: Int = 10_000) throws(HTTPError)
        -> HTTPResponse
    {
        try connection.send(method: "POST", headers: headers(for: body), body: body, timeoutMilliseconds: timeoutMilliseconds)
    }
}
