// Thin wrappers over OpenSSL libcrypto: HMAC-SHA256, SHA-256, constant-time
// comparison and random bytes. Nothing here is written by hand that libcrypto has.
import COpenSSL

/// Cryptographic primitives used by the receive path.
public enum Crypto {
    /// Length in bytes of a SHA-256 digest and of an HMAC-SHA256 tag.
    public static let digestBytes = 32

    /// HMAC-SHA256 of `data` under `key`.
    public static func hmacSHA256(key: [UInt8], data: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: digestBytes)
        var outLength: UInt32 = 0
        let ok = key.withUnsafeBufferPointer { keyBuffer in
            out.withUnsafeMutableBufferPointer { outBuffer in
                HMAC(
                    EVP_sha256(), keyBuffer.baseAddress, Int32(keyBuffer.count),
                    data.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? emptyInput, data.count,
                    outBuffer.baseAddress, &outLength) != nil
            }
        }
        precondition(ok && outLength == 32, "HMAC-SHA256 failed inside libcrypto")
        return out
    }

    /// A secret keyed once for many HMAC-SHA256 tags (shared across threads).
    public final class HMACKey: @unchecked Sendable {
        private let key: [UInt8]
        // Only read after init: each tag is computed on a copy of it.
        private let context: OpaquePointer?

        /// Keys `key`.
        public init(_ key: [UInt8]) {
            self.key = key
            context = key.withUnsafeBufferPointer { iw_hmac_sha256_keyed($0.baseAddress, $0.count) }
        }

        deinit { EVP_MAC_CTX_free(context) }

        /// HMAC-SHA256 of `data` under this key.
        public func tag(_ data: UnsafeRawBufferPointer) -> [UInt8] {
            guard let context else { return Crypto.hmacSHA256(key: key, data: data) }
            var out = [UInt8](repeating: 0, count: digestBytes)
            let ok = out.withUnsafeMutableBufferPointer { outBuffer in
                iw_hmac_sha256_tag(
                    context, data.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? emptyInput, data.count,
                    outBuffer.baseAddress)
            }
            return ok == 1 ? out : Crypto.hmacSHA256(key: key, data: data)
        }

        /// HMAC-SHA256 of a byte array under this key.
        public func tag(_ data: [UInt8]) -> [UInt8] { data.withUnsafeBytes { tag($0) } }
    }

    /// HMAC-SHA256 of a byte array.
    public static func hmacSHA256(key: [UInt8], data: [UInt8]) -> [UInt8] {
        data.withUnsafeBytes { hmacSHA256(key: key, data: $0) }
    }

    /// SHA-256 of `data`.
    public static func sha256(_ data: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: digestBytes)
        out.withUnsafeMutableBufferPointer { outBuffer in
            _ = SHA256(data.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? emptyInput, data.count, outBuffer.baseAddress)
        }
        return out
    }

    /// SHA-256 of a byte array.
    public static func sha256(_ data: [UInt8]) -> [UInt8] {
        data.withUnsafeBytes { sha256($0) }
    }

    /// Compares two equal-length byte arrays in time independent of their contents.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return a.withUnsafeBytes { pa in
            b.withUnsafeBytes { pb in CRYPTO_memcmp(pa.baseAddress, pb.baseAddress, a.count) == 0 }
        }
    }

    /// `count` bytes from libcrypto's CSPRNG.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let ok = out.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32(count)) }
        precondition(ok == 1, "RAND_bytes failed: the system has no entropy source")
        return out
    }

    nonisolated(unsafe) private static let emptyInput: UnsafePointer<UInt8> = {
        let p = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)
        p.initialize(to: 0)
        return UnsafePointer(p)
    }()
}

/// Lower-case hexadecimal encoding and strict decoding.
public enum Hex {
    private static let digits = Array("0123456789abcdef".utf8)

    /// Lower-case hex of `bytes`.
    public static func encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes hex in either case; nil on odd length or a non-hex character.
    public static func decode<S: Collection>(_ text: S) -> [UInt8]? where S.Element == UInt8 {
        guard text.count % 2 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(text.count / 2)
        var high: UInt8? = nil
        for c in text {
            guard let v = value(c) else { return nil }
            if let h = high {
                out.append(h << 4 | v)
                high = nil
            } else {
                high = v
            }
        }
        return out
    }

    private static func value(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 97...102: return c - 87
        case 65...70: return c - 55
        default: return nil
        }
    }
}
