// Settings of webhook-worker: the same environment / --config FILE as the
// handler, plus routes and retry policy. Command-line flags win over both.
import Glibc
public import WebhookClient
public import WebhookCore

/// What is done with an event.
public enum HandlerAction: Sendable, Equatable, CustomStringConvertible {
    /// Run a shell command with the raw body on stdin.
    case exec(String)
    /// POST the raw body to a URL.
    case forward(HTTPURL)

    public var description: String {
        switch self {
        case .exec(let c): return "exec \(c)"
        case .forward(let u): return "forward http://\(u.hostHeader)\(u.path)"
        }
    }

    /// Parses `exec CMD…` or `forward URL`.
    public static func parse(_ text: String) -> HandlerAction? {
        let t = text.trimmingSpaces()
        if t.hasPrefix("exec ") {
            let command = String(t.dropFirst(5)).trimmingSpaces()
            return command.isEmpty ? nil : .exec(command)
        }
        if t.hasPrefix("forward ") {
            return HTTPURL(String(t.dropFirst(8)).trimmingSpaces()).map { .forward($0) }
        }
        return nil
    }
}

/// An event-type pattern and its action: `order.created`, `order.*` or `*`.
public struct Route: Sendable, Equatable {
    /// The pattern.
    public var pattern: String
    /// What to do with matching events.
    public var action: HandlerAction

    /// Creates a route.
    public init(pattern: String, action: HandlerAction) {
        self.pattern = pattern
        self.action = action
    }

    /// How specifically the pattern matches `event`: nil for no match, higher is more specific.
    public func specificity(for event: String) -> Int? {
        if pattern == "*" { return 0 }
        if pattern.hasSuffix(".*") {
            let prefix = pattern.dropLast(1)
            return event.hasPrefix(prefix) ? prefix.count : nil
        }
        return pattern == event ? Int.max : nil
    }
}

/// The worker's settings.
public struct WorkerConfig: Sendable {
    /// The spool root.
    public var spoolDir: String
    /// Attempts before an event is dead-lettered.
    public var attempts = 8
    /// A handler is killed after this long.
    public var timeoutMilliseconds: Int64 = 30_000
    /// The first retry delay.
    public var retryBaseMilliseconds: Int64 = 60_000
    /// Each further delay is this many times the one before…
    public var retryFactor = 3.0
    /// …up to this.
    public var retryMaxMilliseconds: Int64 = 6 * 3_600_000
    /// Delays are spread by ±this fraction so retries of many events do not bunch.
    public var retryJitter = 0.2
    /// Handlers run at once (events of one entity never run at once).
    public var concurrency = 4
    /// Stop claiming new events after this long.
    public var maxSeconds: Int64 = 50
    /// Handled events kept in done/ (0: removed at once).
    public var keepDone = 0
    /// Dedupe retention (markers, skipped events).
    public var retentionSeconds: Int64 = 7 * 86400
    /// Prometheus textfile to write after each run.
    public var metricsFile: String? = nil
    /// Routes by event type.
    public var routes: [Route] = []
    /// The action for events no route matches (from --exec / --forward).
    public var defaultAction: HandlerAction? = nil

    /// A configuration with defaults for `spoolDir`.
    public init(spoolDir: String) {
        self.spoolDir = spoolDir
    }

    /// Settings the worker reads besides the handler's.
    public static let keys: Set<String> = [
        "WEBHOOK_WORKER_ATTEMPTS", "WEBHOOK_WORKER_TIMEOUT", "WEBHOOK_WORKER_CONCURRENCY", "WEBHOOK_WORKER_MAX_SECONDS",
        "WEBHOOK_RETRY_BASE", "WEBHOOK_RETRY_MAX", "WEBHOOK_KEEP_DONE", "WEBHOOK_METRICS_FILE", "WEBHOOK_EXEC",
        "WEBHOOK_FORWARD",
    ]

    /// The action for `event`: the most specific route, else the default; nil means skip.
    public func action(for event: String) -> HandlerAction? {
        var best: (Int, HandlerAction)? = nil
        for route in routes {
            if let s = route.specificity(for: event), s >= (best?.0 ?? -1) { best = (s, route.action) }
        }
        return best?.1 ?? defaultAction
    }

    /// The delay before attempt `attempt + 1` after attempt `attempt` failed; `unit` in [0, 1) picks the jitter.
    public func retryDelayMilliseconds(afterAttempt attempt: Int, unit: Double) -> Int64 {
        var delay = Double(retryBaseMilliseconds)
        if attempt > 1 { for _ in 1..<attempt { delay = min(delay * retryFactor, Double(retryMaxMilliseconds)) } }
        delay = min(delay, Double(retryMaxMilliseconds))
        return Int64(delay * (1 - retryJitter + 2 * retryJitter * unit))
    }

    /// Reads the settings from the environment and `configFile`.
    public static func load(environment: [String: String], configFile: String?) throws(ConfigError) -> (WorkerConfig, [String]) {
        var values = environment
        if let configFile {
            for (key, value) in try ConfigFile.read(configFile) { values[key] = value }
        }
        var warnings: [String] = []
        for key in values.keys.sorted() where key.hasPrefix("WEBHOOK_") && !key.hasPrefix("WEBHOOK_ROUTE_") {
            if !keys.contains(key) && !ReceiverConfig.knownKeys.contains(key) { warnings.append("unknown setting \(key) ignored") }
        }
        guard let spool = values["WEBHOOK_SPOOL_DIR"], !spool.isEmpty else {
            throw ConfigError("WEBHOOK_SPOOL_DIR is not set (environment or --config FILE)")
        }
        var c = WorkerConfig(spoolDir: spool)
        func duration(_ key: String, min: Int64) throws(ConfigError) -> Int64? {
            guard let v = values[key] else { return nil }
            guard let ms = DurationText.parseMilliseconds(v), ms >= min else {
                throw ConfigError("\(key)=\(v): expected a duration of at least \(min)ms (e.g. 30s, 5m)")
            }
            return ms
        }
        func integer(_ key: String, _ range: ClosedRange<Int>) throws(ConfigError) -> Int? {
            guard let v = values[key] else { return nil }
            guard let n = Int(v), range.contains(n) else { throw ConfigError("\(key)=\(v): expected \(range.lowerBound) to \(range.upperBound)") }
            return n
        }
        if let n = try integer("WEBHOOK_WORKER_ATTEMPTS", 1...100) { c.attempts = n }
        if let n = try integer("WEBHOOK_WORKER_CONCURRENCY", 1...256) { c.concurrency = n }
        if let n = try integer("WEBHOOK_KEEP_DONE", 0...10_000_000) { c.keepDone = n }
        if let ms = try duration("WEBHOOK_WORKER_TIMEOUT", min: 100) { c.timeoutMilliseconds = ms }
        if let ms = try duration("WEBHOOK_WORKER_MAX_SECONDS", min: 1000) { c.maxSeconds = ms / 1000 }
        if let ms = try duration("WEBHOOK_RETRY_BASE", min: 1) { c.retryBaseMilliseconds = ms }
        if let ms = try duration("WEBHOOK_RETRY_MAX", min: 1) { c.retryMaxMilliseconds = ms }
        if let ms = try duration("WEBHOOK_DEDUPE_RETENTION", min: 86_400_000) { c.retentionSeconds = ms / 1000 }
        if let f = values["WEBHOOK_METRICS_FILE"], !f.isEmpty { c.metricsFile = f }
        if let v = values["WEBHOOK_EXEC"], !v.isEmpty { c.defaultAction = .exec(v) }
        if let v = values["WEBHOOK_FORWARD"], !v.isEmpty {
            guard let u = HTTPURL(v) else { throw ConfigError("WEBHOOK_FORWARD=\(v): expected http://host[:port]/path") }
            c.defaultAction = .forward(u)
        }
        for key in values.keys.sorted() where key.hasPrefix("WEBHOOK_ROUTE_") {
            let v = values[key] ?? ""
            let parts = v.trimmingSpaces().split(separator: " ", maxSplits: 1)
            guard parts.count == 2, let action = HandlerAction.parse(String(parts[1])) else {
                throw ConfigError("\(key)=\(v): expected PATTERN exec COMMAND or PATTERN forward URL (e.g. order.* exec /usr/local/bin/on-order)")
            }
            c.routes.append(Route(pattern: String(parts[0]), action: action))
        }
        return (c, warnings)
    }
}
