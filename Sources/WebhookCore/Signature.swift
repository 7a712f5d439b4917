// X-Webhook-Signature verification.
//
// The header carries one or more comma-separated `sha256=<64 hex>` values (several
// allow the sender to sign with two secrets during a rotation). Every configured
// secret is tried against every well-formed value; tags are compared as 32 decoded
// bytes with CRYPTO_memcmp. Nothing here ever reports the expected tag.

/// Why a delivery's signature was not accepted.
public enum SignatureFailure: Error, Equatable, Sendable {
    /// No `X-Webhook-Signature` header, or an empty one.
    case missing
    /// The header holds no well-formed `sha256=<64 hex>` value.
    case malformed
    /// Well-formed, but no configured secret produces any of the given tags.
    case mismatch

    /// A short description, safe to log and to send back.
    public var reason: String {
        switch self {
        case .missing: return "X-Webhook-Signature header is missing"
        case .malformed: return "X-Webhook-Signature header is not of the form sha256=<64 hex digits>"
        case .mismatch: return "signature does not match the body under any configured secret"
        }
    }
}

/// Checks signatures against the configured secrets.
public struct SignatureVerifier: Sendable {
    /// At most this many candidate tags are considered from one header.
    public static let maxCandidates = 16
    private let keys: [Crypto.HMACKey]

    /// A verifier for `secrets`, the first being the one that signs.
    public init(secrets: [[UInt8]]) {
        precondition(!secrets.isEmpty, "a verifier needs at least one secret")
        keys = secrets.map(Crypto.HMACKey.init)
    }

    /// Decodes the header's well-formed tags; throws when there is none.
    public static func candidates(in header: String?) throws(SignatureFailure) -> [[UInt8]] {
        guard let header, !header.allSatisfy({ $0 == " " || $0 == "\t" }) else { throw .missing }
        var tags: [[UInt8]] = []
        for part in header.utf8.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: true) {
            var slice = part[...]
            while let first = slice.first, first == 32 || first == 9 { slice = slice.dropFirst() }
            while let last = slice.last, last == 32 || last == 9 { slice = slice.dropLast() }
            let prefix = Array("sha256=".utf8)
            guard slice.count == prefix.count + 64, slice.starts(with: prefix) else { continue }
            guard let tag = Hex.decode(slice.dropFirst(prefix.count)), tag.count == Crypto.digestBytes else { continue }
            tags.append(tag)
            if tags.count == maxCandidates { break }
        }
        guard !tags.isEmpty else { throw .malformed }
        return tags
    }

    /// Verifies `header` over the raw `body`.
    public func verify(header: String?, body: UnsafeRawBufferPointer) throws(SignatureFailure) {
        let tags = try Self.candidates(in: header)
        var matched = false
        for key in keys {
            let expected = key.tag(body)
            for tag in tags where Crypto.constantTimeEqual(expected, tag) {
                matched = true
            }
        }
        if !matched { throw .mismatch }
    }

    /// Verifies `header` over `body`.
    public func verify(header: String?, body: [UInt8]) throws(SignatureFailure) {
        let result = body.withUnsafeBytes { raw in
            Result { () throws(SignatureFailure) in try verify(header: header, body: raw) }
        }
        try result.get()
    }

    /// The header value the first secret gives `body`, as the sender computes it.
    public func sign(_ body: [UInt8]) -> String {
        "sha256=" + Hex.encode(keys[0].tag(body))
    }
}
