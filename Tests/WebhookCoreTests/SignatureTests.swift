import Foundation
import Synchronization
import Testing
import WebhookCore
import WebhookTestSupport

struct SignatureVector: Sendable, CustomTestStringConvertible {
    let name: String
    let secrets: [String]
    let body: [UInt8]
    let header: String
    let valid: Bool
    var testDescription: String { name }

    static func all() throws -> [SignatureVector] {
        guard let url = Bundle.module.url(forResource: "Fixtures/signatures", withExtension: "json") else {
            throw CocoaError(.fileNoSuchFile)
        }
        let root = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any]
        let cases = root?["cases"] as? [[String: Any]] ?? []
        return cases.map { c in
            SignatureVector(
                name: c["name"] as? String ?? "?", secrets: c["secrets"] as? [String] ?? [],
                body: Array(Data(base64Encoded: c["body_base64"] as? String ?? "") ?? Data()),
                header: c["header"] as? String ?? "", valid: c["valid"] as? Bool ?? false)
        }
    }
}

@Suite struct SignatureTests {
    @Test func vectorFileHasTheDocumentedCases() throws {
        let names = Set(try SignatureVector.all().map(\.name))
        for expected in [
            "empty body", "upper-case hex", "several signatures, second right", "second configured secret (rotation)",
            "wrong secret", "missing prefix", "63 hex digits", "65 hex digits", "non-hex digits", "empty header",
        ] {
            #expect(names.contains(expected), "vector \(expected) missing")
        }
    }

    @Test(arguments: try SignatureVector.all())
    func vector(_ v: SignatureVector) throws {
        let verifier = SignatureVerifier(secrets: v.secrets.map { Array($0.utf8) })
        let accepted: Bool
        do {
            try verifier.verify(header: v.header, body: v.body)
            accepted = true
        } catch {
            accepted = false
            // The reason is safe to send back: it never carries the expected tag.
            let expected = Hex.encode(Crypto.hmacSHA256(key: Array(v.secrets[0].utf8), data: v.body))
            #expect(!error.reason.lowercased().contains(expected))
        }
        #expect(accepted == v.valid, "\(v.name)")
    }

    @Test func aKeyedContextSharedByManyThreadsGivesTheOneShotTag() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = Crypto.HMACKey(Array("Jefe".utf8))
        let data = Array("what do ya want for nothing?".utf8)
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        #expect(Hex.encode(key.tag(data)) == expected)
        #expect(Hex.encode(Crypto.hmacSHA256(key: Array("Jefe".utf8), data: data)) == expected)
        let wrong = Mutex(0)
        runConcurrently(8) { i in
            for n in 0..<2000 {
                let body = Array("body \(i) \(n)".utf8)
                if key.tag(body) != Crypto.hmacSHA256(key: Array("Jefe".utf8), data: body) { wrong.withLock { $0 += 1 } }
            }
        }
        #expect(wrong.withLock { $0 } == 0)
    }

    @Test func signProducesWhatVerifies() throws {
        let v = SignatureVerifier(secrets: [Array("k1".utf8), Array("k2".utf8)])
        let body = Array("{\"event\":\"x\"}".utf8)
        try v.verify(header: v.sign(body), body: body)
        #expect(v.sign(body).hasPrefix("sha256="))
        #expect(v.sign(body).count == 71)
    }

    @Test func failureKinds() {
        let v = SignatureVerifier(secrets: [Array("k".utf8)])
        let body = Array("b".utf8)
        #expect(throws: SignatureFailure.missing) { try v.verify(header: nil, body: body) }
        #expect(throws: SignatureFailure.missing) { try v.verify(header: "  ", body: body) }
        #expect(throws: SignatureFailure.malformed) { try v.verify(header: "sha256=abc", body: body) }
        #expect(throws: SignatureFailure.malformed) { try v.verify(header: "sha256=" + String(repeating: "z", count: 64), body: body) }
        #expect(throws: SignatureFailure.mismatch) { try v.verify(header: "sha256=" + String(repeating: "0", count: 64), body: body) }
    }

    @Test func wellFormedValueNextToGarbageStillCounts() throws {
        let v = SignatureVerifier(secrets: [Array("k".utf8)])
        let body = Array("b".utf8)
        try v.verify(header: "sha1=deadbeef, " + v.sign(body) + " ,junk", body: body)
    }

    @Test func hexRoundTrip() {
        let bytes: [UInt8] = [0, 1, 0x7f, 0x80, 0xff]
        #expect(Hex.encode(bytes) == "00017f80ff")
        #expect(Hex.decode(Array("00017F80FF".utf8)) == bytes)
        #expect(Hex.decode(Array("0".utf8)) == nil)
        #expect(Hex.decode(Array("0g".utf8)) == nil)
    }

    @Test func sha256KnownAnswer() {
        #expect(Hex.encode(Crypto.sha256(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}

@Suite struct ConstantTimeTests {
    /// The fastest of `rounds` batches, in nanoseconds per comparison.
    static func fastest(_ compare: ([UInt8], [UInt8]) -> Bool, _ a: [UInt8], _ b: [UInt8], rounds: Int) -> Double {
        var best = Double.infinity
        var sink = 0
        for _ in 0..<rounds {
            let start = monotonicNanos()
            for _ in 0..<20_000 where compare(a, b) { sink += 1 }
            best = min(best, Double(monotonicNanos() - start) / 20_000)
        }
        #expect(sink == 0)
        return best
    }

    /// The compare takes as long whether the first or the last byte differs. The
    /// fastest of many interleaved batches is compared, so a busy machine slows
    /// both alike; an early-exit compare shows up as a clear gap.
    @Test func comparisonTimeDoesNotDependOnWhereTheTagsDiffer() {
        let expected = Crypto.sha256(Array("tag".utf8))
        var firstWrong = expected
        firstWrong[0] ^= 1
        var lastWrong = expected
        lastWrong[31] ^= 1
        var early = Double.infinity
        var late = Double.infinity
        for _ in 0..<10 {
            early = min(early, Self.fastest(Crypto.constantTimeEqual, expected, firstWrong, rounds: 5))
            late = min(late, Self.fastest(Crypto.constantTimeEqual, expected, lastWrong, rounds: 5))
        }
        let ratio = max(early, late) / min(early, late)
        #expect(ratio < 1.35, "first byte wrong: \(early) ns, last byte wrong: \(late) ns")
    }
}
