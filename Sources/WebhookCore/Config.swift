// Configuration: environment variables, or `--config FILE` holding the same
// KEY=VALUE lines (systemd's EnvironmentFile= format). A value in the file wins
// over the same variable in the environment, so what the operator named on the
// command line is what runs.
import Glibc

/// A configuration problem, reported in one line before the program refuses to start.
public struct ConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The line to print.
    public let description: String

    /// Creates an error with its message.
    public init(_ message: String) { description = message }
}

/// How the spool write is made durable.
public enum Durability: String, Sendable, CaseIterable {
    /// Concurrent requests share one flush (group commit): the default.
    case group
    /// One fsync of the file and one of its directory per request.
    case request
    /// No fsync at all: for measuring only, refused unless WEBHOOK_UNSAFE=1.
    case off
}

/// The settings of the receive path.
public struct ReceiverConfig: Sendable {
    /// Every setting a program of this package reads (for the unknown-key warning).
    public static let knownKeys: Set<String> = [
        "WEBHOOK_SECRET_FILE", "WEBHOOK_SPOOL_DIR", "WEBHOOK_MAX_BODY_BYTES", "WEBHOOK_DEDUPE_RETENTION",
        "WEBHOOK_DEDUPE_FIELDS", "WEBHOOK_ACK_DEADLINE", "WEBHOOK_THREADS", "WEBHOOK_DURABILITY", "WEBHOOK_UNSAFE",
        "WEBHOOK_MIN_FREE_BYTES",
    ]
    /// Request parameters the nginx snippet sets, which CGI mode finds in its
    /// environment beside the settings: not settings, and not warned about.
    static let requestParameterKeys: Set<String> = ["WEBHOOK_ENDPOINT"]

    /// File holding the secrets, one per line; the first signs, all verify.
    public var secretFile: String
    /// The spool's root directory.
    public var spoolDir: String
    /// Largest body accepted, bytes.
    public var maxBodyBytes: Int = 1 << 20
    /// How long dedupe markers live, and how old an event's timestamp may be, seconds.
    public var retentionSeconds: Int64 = 7 * 86400
    /// Payload paths the dedupe key is made from; empty means the body's SHA-256.
    public var dedupeFields: [String] = []
    /// The handler answers within this many milliseconds (503 past it).
    public var ackDeadlineMilliseconds: Int = 3000
    /// Requests served at once in FastCGI mode.
    public var threads: Int = 16
    /// How the spool write is made durable.
    public var durability: Durability = .group
    /// Refuse (503) before writing when the spool's file system has less free space than this.
    public var minFreeBytes: Int = 16 << 20

    /// Creates a configuration with defaults.
    public init(secretFile: String, spoolDir: String) {
        self.secretFile = secretFile
        self.spoolDir = spoolDir
    }

    /// Reads settings from `environment`, overridden by `configFile` when given.
    /// Unknown `WEBHOOK_*` names are returned as warnings.
    public static func load(environment: [String: String], configFile: String?) throws(ConfigError) -> (
        ReceiverConfig, warnings: [String]
    ) {
        var values = environment
        var warnings: [String] = []
        if let configFile {
            for (key, value) in try ConfigFile.read(configFile) { values[key] = value }
        }
        for key in values.keys.sorted() where key.hasPrefix("WEBHOOK_") && !knownKeys.contains(key)
            && !requestParameterKeys.contains(key)
        {
            warnings.append("unknown setting \(key) ignored")
        }
        func required(_ key: String) throws(ConfigError) -> String {
            guard let v = values[key], !v.isEmpty else {
                throw ConfigError("\(key) is not set (environment or --config FILE)")
            }
            return v
        }
        var config = ReceiverConfig(secretFile: try required("WEBHOOK_SECRET_FILE"), spoolDir: try required("WEBHOOK_SPOOL_DIR"))
        if let v = values["WEBHOOK_MAX_BODY_BYTES"] {
            guard let n = ByteSize.parse(v), n > 0, n <= 64 << 20 else {
                throw ConfigError("WEBHOOK_MAX_BODY_BYTES=\(v): expected a size from 1 to 64M (e.g. 1048576, 512K, 1M)")
            }
            config.maxBodyBytes = n
        }
        if let v = values["WEBHOOK_DEDUPE_RETENTION"] {
            guard let ms = DurationText.parseMilliseconds(v), ms >= 86_400_000 else {
                throw ConfigError("WEBHOOK_DEDUPE_RETENTION=\(v): expected a duration of at least 1d (e.g. 7d, 240h)")
            }
            config.retentionSeconds = ms / 1000
        }
        if let v = values["WEBHOOK_DEDUPE_FIELDS"], !v.isEmpty {
            let fields = v.split(separator: ",").map { String($0).trimmingSpaces() }
            guard fields.allSatisfy({ !$0.isEmpty && !$0.hasPrefix(".") && !$0.hasSuffix(".") && !$0.contains("..") })
            else { throw ConfigError("WEBHOOK_DEDUPE_FIELDS=\(v): expected dotted payload paths, e.g. event,data.id,timestamp") }
            config.dedupeFields = fields
        }
        if let v = values["WEBHOOK_ACK_DEADLINE"] {
            guard let ms = DurationText.parseMilliseconds(v), ms >= 100, ms < 5000 else {
                throw ConfigError("WEBHOOK_ACK_DEADLINE=\(v): expected a duration from 100ms to under the sender's 5s")
            }
            config.ackDeadlineMilliseconds = Int(ms)
        }
        if let v = values["WEBHOOK_MIN_FREE_BYTES"] {
            guard let n = ByteSize.parse(v), n >= 0 else {
                throw ConfigError("WEBHOOK_MIN_FREE_BYTES=\(v): expected a size (e.g. 16M, 0 to turn the check off)")
            }
            config.minFreeBytes = n
        }
        if let v = values["WEBHOOK_THREADS"] {
            guard let n = Int(v), (1...1024).contains(n) else { throw ConfigError("WEBHOOK_THREADS=\(v): expected 1 to 1024") }
            config.threads = n
        }
        if let v = values["WEBHOOK_DURABILITY"] {
            guard let d = Durability(rawValue: v) else {
                throw ConfigError("WEBHOOK_DURABILITY=\(v): expected one of \(Durability.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            if d == .off && values["WEBHOOK_UNSAFE"] != "1" {
                throw ConfigError("WEBHOOK_DURABILITY=off loses accepted events on a crash; it is for benchmarks and needs WEBHOOK_UNSAFE=1")
            }
            config.durability = d
        }
        return (config, warnings)
    }

    /// Reads the secrets from ``secretFile``.
    public func loadSecrets() throws(ConfigError) -> [[UInt8]] {
        try Self.loadSecrets(from: secretFile)
    }

    /// Reads secrets: one per line, surrounding white space trimmed, blank lines skipped.
    public static func loadSecrets(from secretFile: String) throws(ConfigError) -> [[UInt8]] {
        let bytes: [UInt8]
        do { bytes = try readWholeFile(secretFile, limit: 1 << 16) } catch {
            throw ConfigError("cannot read WEBHOOK_SECRET_FILE \(secretFile): \(error)")
        }
        let secrets = bytes.split(separator: 10).map { Array(String(decoding: $0, as: UTF8.self).trimmingSpaces().utf8) }
            .filter { !$0.isEmpty }
        guard !secrets.isEmpty else { throw ConfigError("WEBHOOK_SECRET_FILE \(secretFile) holds no secret") }
        return secrets
    }
}

/// Parsing of KEY=VALUE files.
public enum ConfigFile {
    /// The assignments in `path`, in order. `#` starts a comment line; values may
    /// be wrapped in single or double quotes.
    public static func read(_ path: String) throws(ConfigError) -> [(String, String)] {
        let bytes: [UInt8]
        do { bytes = try readWholeFile(path, limit: 1 << 20) } catch {
            throw ConfigError("cannot read config file \(path): \(error)")
        }
        var out: [(String, String)] = []
        for (number, raw) in bytes.split(separator: 10, omittingEmptySubsequences: false).enumerated() {
            let line = String(decoding: raw, as: UTF8.self).trimmingSpaces()
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            guard let eq = line.firstIndex(of: "=") else {
                throw ConfigError("\(path):\(number + 1): expected KEY=VALUE")
            }
            var key = String(line[..<eq]).trimmingSpaces()
            if key.hasPrefix("export ") { key = String(key.dropFirst(7)).trimmingSpaces() }
            var value = String(line[line.index(after: eq)...]).trimmingSpaces()
            if value.count >= 2, let f = value.first, f == "\"" || f == "'", value.last == f {
                value = String(value.dropFirst().dropLast())
            }
            guard !key.isEmpty, key.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                throw ConfigError("\(path):\(number + 1): invalid name \(key)")
            }
            out.append((key, value))
        }
        return out
    }
}

/// Durations as operators write them: `5s`, `500ms`, `2m`, `12h`, `7d`; a bare number is seconds.
public enum DurationText {
    /// Milliseconds for `text`, nil when it is not a duration.
    public static func parseMilliseconds(_ text: String) -> Int64? {
        let t = text.trimmingSpaces()
        let units: [(String, Double)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
        for (suffix, factor) in units where t.hasSuffix(suffix) {
            let number = String(t.dropLast(suffix.count))
            if suffix == "s" && number.hasSuffix("m") { continue }
            guard let v = Double(number), v >= 0, v.isFinite, v * factor < 9e15 else { return nil }
            return Int64(v * factor)
        }
        guard let v = Double(t), v >= 0, v.isFinite, v < 9e12 else { return nil }
        return Int64(v * 1000)
    }
}

/// Sizes as operators write them: `1048576`, `512K`, `1M`.
public enum ByteSize {
    /// Bytes for `text`, nil when it is not a size.
    public static func parse(_ text: String) -> Int? {
        let t = text.trimmingSpaces().uppercased()
        let factors: [(String, Int)] = [("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)]
        for (suffix, factor) in factors where t.hasSuffix(suffix) {
            guard let n = Int(t.dropLast()), n >= 0, n <= Int.max / factor else { return nil }
            return n * factor
        }
        return Int(t)
    }
}

extension String {
    /// The string without leading and trailing spaces, tabs and carriage returns.
    public func trimmingSpaces() -> String {
        let u = Array(utf8)
        var start = 0
        var end = u.count
        while start < end, u[start] == 32 || u[start] == 9 || u[start] == 13 { start += 1 }
        while end > start, u[end - 1] == 32 || u[end - 1] == 9 || u[end - 1] == 13 { end -= 1 }
        return String(decoding: u[start..<end], as: UTF8.self)
    }
}

/// Reads a whole regular file of at most `limit` bytes.
public func readWholeFile(_ path: String, limit: Int) throws(SystemError) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw SystemError("open", path, errno) }
    defer { close(fd) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw SystemError("read", path, errno)
        }
        if n == 0 { return out }
        out.append(contentsOf: chunk[0..<n])
        if out.count > limit { throw SystemError("read", path, EFBIG) }
    }
}
