// The event payload: a strict, iterative JSON validator that pulls out the few
// fields the receive path acts on.
//
// The whole body is validated (RFC 8259 grammar, UTF-8 in strings) without
// recursion, so nesting depth costs heap, not stack, and is capped. Only the
// watched paths are decoded: `event`, `timestamp`, `organizationId`, `data.id`
// and any configured dedupe fields. A watched path (or a prefix of one, such as
// `data`) that occurs twice is refused: parsers disagree on which duplicate wins,
// and the worker's handler must see the same event we deduplicated.

/// A scalar found at a watched path.
public enum JSONScalar: Equatable, Sendable {
    /// A string, decoded.
    case string(String)
    /// A number, `true`, `false` or `null`, as written.
    case literal(String)

    /// The value as text: the decoded string or the literal as written.
    public var text: String {
        switch self {
        case .string(let s): return s
        case .literal(let s): return s
        }
    }
}

/// What the receive path needs from a payload.
public struct Payload: Sendable, Equatable {
    /// The event type, e.g. `order.created`.
    public var event: String
    /// The sender's `timestamp`, as written, when it is a string.
    public var timestamp: String?
    /// `organizationId`, when present as a scalar.
    public var organizationId: String?
    /// `data.id`, when present as a scalar.
    public var entityId: String?
    /// Every watched path that held a scalar, keyed by dotted path.
    public var fields: [String: JSONScalar]
}

/// Why a signed body is not an acceptable event.
public enum PayloadError: Error, Equatable, Sendable {
    /// Not valid JSON; the text says where.
    case invalidJSON(String)
    /// Valid JSON, but not an object.
    case notAnObject
    /// No top-level `event`, or it is not a non-empty string.
    case missingEvent
    /// A watched key occurs twice.
    case duplicateKey(String)
    /// Nesting deeper than ``PayloadParser/maxDepth``.
    case tooDeep

    /// A short description, safe to log and to send back.
    public var reason: String {
        switch self {
        case .invalidJSON(let where_): return "body is not valid JSON (\(where_))"
        case .notAnObject: return "body is not a JSON object"
        case .missingEvent: return "body has no string \"event\" field"
        case .duplicateKey(let path): return "body has the key \"\(path)\" more than once"
        case .tooDeep: return "body nests deeper than \(PayloadParser.maxDepth) levels"
        }
    }
}

/// Parses payloads.
public enum PayloadParser {
    /// Deepest nesting accepted.
    public static let maxDepth = 512
    /// The paths always watched.
    public static let standardPaths = ["event", "timestamp", "organizationId", "data.id"]
    private static let standardWatched = watchedPaths(standardPaths)

    /// `paths` and every prefix of them (`data` for `data.id`), which are checked for duplicates too.
    static func watchedPaths(_ paths: [String]) -> Set<String> {
        var watched = Set(paths)
        for path in paths {
            var parts = path.split(separator: ".", omittingEmptySubsequences: false)
            while parts.count > 1 {
                parts.removeLast()
                watched.insert(parts.joined(separator: "."))
            }
        }
        return watched
    }

    /// Parses `body`, also extracting `extraPaths` (dotted object paths).
    public static func parse(_ body: UnsafeRawBufferPointer, extraPaths: [String] = []) throws(PayloadError) -> Payload {
        let watched = extraPaths.isEmpty ? standardWatched : watchedPaths(standardPaths + extraPaths)
        var scanner = JSONScanner(body, watched: watched)
        let found = try scanner.run()
        guard case .string(let event)? = found["event"], !event.isEmpty else { throw .missingEvent }
        var timestamp: String? = nil
        if case .string(let t)? = found["timestamp"] { timestamp = t }
        return Payload(
            event: event, timestamp: timestamp, organizationId: found["organizationId"]?.text,
            entityId: found["data.id"]?.text, fields: found)
    }

    /// Parses a byte array.
    public static func parse(_ body: [UInt8], extraPaths: [String] = []) throws(PayloadError) -> Payload {
        let result = body.withUnsafeBytes { raw in
            Result { () throws(PayloadError) in try parse(raw, extraPaths: extraPaths) }
        }
        return try result.get()
    }
}

struct JSONScanner {
    private let bytes: UnsafeRawBufferPointer
    private var i = 0
    private let watched: Set<String>
    private let maxWatchedDepth: Int
    /// One entry per open container: the current key for objects, nil for arrays.
    private var keys: [String?] = []
    private var seen: Set<String> = []
    private var found: [String: JSONScalar] = [:]

    init(_ bytes: UnsafeRawBufferPointer, watched: Set<String>) {
        self.bytes = bytes
        self.watched = watched
        self.maxWatchedDepth = watched.map { $0.split(separator: ".").count }.max() ?? 0
    }

    private func fail(_ what: String) -> PayloadError {
        .invalidJSON("\(what) at byte \(i)")
    }

    private var atEnd: Bool { i >= bytes.count }
    private var peek: UInt8 { bytes[i] }

    private mutating func skipSpace() {
        while i < bytes.count {
            switch bytes[i] {
            case 0x20, 0x09, 0x0A, 0x0D: i += 1
            default: return
            }
        }
    }

    /// The dotted path of the value about to be read, when it could be watched.
    private func currentPath() -> String? {
        guard !keys.isEmpty, keys.count <= maxWatchedDepth else { return nil }
        var parts: [String] = []
        for key in keys {
            guard let key else { return nil }
            parts.append(key)
        }
        let path = parts.joined(separator: ".")
        return watched.contains(path) ? path : nil
    }

    mutating func run() throws(PayloadError) -> [String: JSONScalar] {
        skipSpace()
        guard !atEnd else { throw fail("empty body") }
        guard peek == UInt8(ascii: "{") else {
            try validateNonObject()
            throw .notAnObject
        }
        try scanValues()
        skipSpace()
        guard atEnd else { throw fail("trailing data") }
        return found
    }

    /// Valid JSON that is not an object is reported as such, not as invalid JSON.
    private mutating func validateNonObject() throws(PayloadError) {
        try scanValues()
        skipSpace()
        guard atEnd else { throw fail("trailing data") }
    }

    /// Reads one complete value (and everything nested in it).
    private mutating func scanValues() throws(PayloadError) {
        let baseDepth = keys.count
        while true {
            // Expecting a value.
            skipSpace()
            guard !atEnd else { throw fail("unexpected end") }
            let path = currentPath()
            if let path {
                if seen.contains(path) { throw .duplicateKey(path) }
                seen.insert(path)
            }
            let c = peek
            switch c {
            case UInt8(ascii: "{"):
                i += 1
                guard keys.count < PayloadParser.maxDepth else { throw .tooDeep }
                skipSpace()
                guard !atEnd else { throw fail("unexpected end") }
                if peek == UInt8(ascii: "}") {
                    i += 1
                } else {
                    keys.append(try readKey())
                    continue
                }
            case UInt8(ascii: "["):
                i += 1
                guard keys.count < PayloadParser.maxDepth else { throw .tooDeep }
                skipSpace()
                guard !atEnd else { throw fail("unexpected end") }
                if peek == UInt8(ascii: "]") {
                    i += 1
                } else {
                    keys.append(nil)
                    continue
                }
            case UInt8(ascii: "\""):
                let s = try readString(decode: path != nil)
                if let path, let s { found[path] = .string(s) }
            case UInt8(ascii: "-"), 48...57:
                let start = i
                try readNumber()
                if let path { found[path] = .literal(text(start, i)) }
            case UInt8(ascii: "t"): try literal("true", path)
            case UInt8(ascii: "f"): try literal("false", path)
            case UInt8(ascii: "n"): try literal("null", path)
            default:
                throw fail("unexpected character")
            }
            // After a value: close containers or move to the next member.
            while true {
                if keys.count == baseDepth { return }
                skipSpace()
                guard !atEnd else { throw fail("unexpected end") }
                let inObject = keys[keys.count - 1] != nil
                let c = peek
                i += 1
                if c == UInt8(ascii: ",") {
                    if inObject {
                        skipSpace()
                        keys[keys.count - 1] = try readKey()
                    }
                    break
                } else if inObject && c == UInt8(ascii: "}") || !inObject && c == UInt8(ascii: "]") {
                    keys.removeLast()
                } else {
                    i -= 1
                    throw fail(inObject ? "expected , or }" : "expected , or ]")
                }
            }
        }
    }

    /// Reads `"key"` and the colon after it.
    private mutating func readKey() throws(PayloadError) -> String {
        guard !atEnd, peek == UInt8(ascii: "\"") else { throw fail("expected a string key") }
        let key = try readString(decode: true) ?? ""
        skipSpace()
        guard !atEnd, peek == UInt8(ascii: ":") else { throw fail("expected :") }
        i += 1
        return key
    }

    private func text(_ from: Int, _ to: Int) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: bytes[from..<to]), as: UTF8.self)
    }

    private mutating func literal(_ word: StaticString, _ path: String?) throws(PayloadError) {
        let w = UnsafeRawBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount)
        guard i + w.count <= bytes.count else { throw fail("unexpected end") }
        for k in 0..<w.count where bytes[i + k] != w[k] { throw fail("invalid literal") }
        if let path { found[path] = .literal(text(i, i + w.count)) }
        i += w.count
    }

    private mutating func readNumber() throws(PayloadError) {
        func digits() -> Int {
            let start = i
            while i < bytes.count, bytes[i] >= 48, bytes[i] <= 57 { i += 1 }
            return i - start
        }
        if peek == UInt8(ascii: "-") { i += 1 }
        guard !atEnd else { throw fail("unexpected end") }
        if peek == UInt8(ascii: "0") {
            i += 1
        } else if digits() == 0 {
            throw fail("invalid number")
        }
        if !atEnd && peek == UInt8(ascii: ".") {
            i += 1
            guard digits() > 0 else { throw fail("invalid number") }
        }
        if !atEnd && (peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E")) {
            i += 1
            if !atEnd && (peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-")) { i += 1 }
            guard digits() > 0 else { throw fail("invalid number") }
        }
    }

    private mutating func hex4() throws(PayloadError) -> UInt32 {
        guard i + 4 <= bytes.count else { throw fail("unexpected end") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[i]
            let d: UInt32
            switch c {
            case 48...57: d = UInt32(c - 48)
            case 97...102: d = UInt32(c - 87)
            case 65...70: d = UInt32(c - 55)
            default: throw fail("invalid \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    /// Reads a string at `"`, validating escapes and UTF-8; decodes when asked.
    private mutating func readString(decode: Bool) throws(PayloadError) -> String? {
        i += 1
        var out: [UInt8] = []
        func append(scalar: UInt32) {
            guard decode else { return }
            let s = Unicode.Scalar(scalar) ?? "\u{FFFD}"
            out.append(contentsOf: String(Character(s)).utf8)
        }
        while true {
            guard !atEnd else { throw fail("unterminated string") }
            let c = peek
            if c == UInt8(ascii: "\"") {
                i += 1
                return decode ? String(decoding: out, as: UTF8.self) : nil
            }
            if c < 0x20 { throw fail("control character in string") }
            if c == UInt8(ascii: "\\") {
                i += 1
                guard !atEnd else { throw fail("unterminated string") }
                let e = peek
                i += 1
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): if decode { out.append(e) }
                case UInt8(ascii: "b"): if decode { out.append(8) }
                case UInt8(ascii: "f"): if decode { out.append(12) }
                case UInt8(ascii: "n"): if decode { out.append(10) }
                case UInt8(ascii: "r"): if decode { out.append(13) }
                case UInt8(ascii: "t"): if decode { out.append(9) }
                case UInt8(ascii: "u"):
                    var v = try hex4()
                    if v >= 0xD800 && v < 0xDC00 && i + 6 <= bytes.count && bytes[i] == UInt8(ascii: "\\")
                        && bytes[i + 1] == UInt8(ascii: "u")
                    {
                        let save = i
                        i += 2
                        let low = try hex4()
                        if low >= 0xDC00 && low < 0xE000 {
                            v = 0x10000 + ((v - 0xD800) << 10) + (low - 0xDC00)
                        } else {
                            i = save
                        }
                    }
                    append(scalar: v)
                default: throw fail("invalid escape")
                }
                continue
            }
            if c < 0x80 {
                if decode { out.append(c) }
                i += 1
                continue
            }
            let start = i
            try skipUTF8Sequence()
            if decode { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<i])) }
        }
    }

    /// Validates one multi-byte UTF-8 sequence (no overlongs, no surrogates, at most U+10FFFF).
    private mutating func skipUTF8Sequence() throws(PayloadError) {
        let c = bytes[i]
        let length: Int
        var low: UInt8 = 0x80
        var high: UInt8 = 0xBF
        switch c {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; low = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; high = 0x9F
        case 0xF0: length = 4; low = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; high = 0x8F
        default: throw fail("invalid UTF-8")
        }
        guard i + length <= bytes.count else { throw fail("invalid UTF-8") }
        for k in 1..<length {
            let b = bytes[i + k]
            let (lo, hi) = k == 1 ? (low, high) : (UInt8(0x80), UInt8(0xBF))
            guard b >= lo && b <= hi else { throw fail("invalid UTF-8") }
        }
        i += length
    }
}
