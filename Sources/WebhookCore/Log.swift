// One JSON object per line on stderr. Each line goes out in one write(2), so
// lines from concurrent requests never interleave. Callers pass only facts that
// are safe to keep: never a secret, a signature or a body.
import Glibc

/// A value in a log line.
public enum LogValue: Sendable {
    case string(String)
    case int(Int)
    case double(Double)
}

/// Writes structured log lines.
public struct Logger: Sendable {
    /// Where lines go; tests capture them.
    public var sink: @Sendable (_ line: [UInt8]) -> Void
    /// The program name put on each line.
    public var program: String

    /// A logger writing to stderr.
    public static func stderr(program: String) -> Logger {
        Logger(program: program) { line in
            line.withUnsafeBytes { buffer in
                var offset = 0
                while offset < buffer.count {
                    let n = write(2, buffer.baseAddress! + offset, buffer.count - offset)
                    if n <= 0 {
                        if n < 0 && errno == EINTR { continue }
                        return
                    }
                    offset += n
                }
            }
        }
    }

    /// Creates a logger with a custom sink.
    public init(program: String, sink: @escaping @Sendable (_ line: [UInt8]) -> Void) {
        self.program = program
        self.sink = sink
    }

    /// Writes one line with `level`, `msg` and `fields`, stamped with the time.
    public func log(_ level: String, _ message: String, _ fields: [(String, LogValue)] = [], clock: WallClock = .system) {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        out.append(contentsOf: "{\"ts\":".utf8)
        JSONText.appendString(Timestamp.format(micros: clock.nowMicros()), to: &out)
        for (key, value) in [("level", LogValue.string(level)), ("prog", .string(program)), ("msg", .string(message))] + fields {
            out.append(UInt8(ascii: ","))
            JSONText.appendString(key, to: &out)
            out.append(UInt8(ascii: ":"))
            switch value {
            case .string(let s): JSONText.appendString(s, to: &out)
            case .int(let i): out.append(contentsOf: String(i).utf8)
            case .double(let d): out.append(contentsOf: JSONText.number(d).utf8)
            }
        }
        out.append(contentsOf: "}\n".utf8)
        sink(out)
    }
}

/// Small JSON writing helpers.
public enum JSONText {
    private static let hex = Array("0123456789abcdef".utf8)

    /// Appends `s` as a JSON string literal.
    public static func appendString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: "\\\"".utf8)
            case UInt8(ascii: "\\"): out.append(contentsOf: "\\\\".utf8)
            case 10: out.append(contentsOf: "\\n".utf8)
            case 13: out.append(contentsOf: "\\r".utf8)
            case 9: out.append(contentsOf: "\\t".utf8)
            case 0..<0x20, 0x7F:
                out.append(contentsOf: "\\u00".utf8)
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 15)])
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// `s` as a JSON string literal.
    public static func string(_ s: String) -> String {
        var out: [UInt8] = []
        appendString(s, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// A finite number with at most three decimals (no trailing zeros), or 0.
    public static func number(_ d: Double) -> String {
        guard d.isFinite else { return "0" }
        let scaled = (d * 1000).rounded()
        let whole = Int64(scaled / 1000)
        let frac = Int64(abs(scaled)) % 1000
        let sign = scaled < 0 && whole == 0 ? "-" : ""
        guard frac != 0 else { return sign + String(whole) }
        var digits = Timestamp.pad(Int(frac), 3)
        while digits.hasSuffix("0") { digits.removeLast() }
        return sign + String(whole) + "." + digits
    }
}
