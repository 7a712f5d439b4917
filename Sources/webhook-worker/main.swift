// webhook-worker: drains the spool into the operator's handlers (from cron or a
// systemd timer) and answers the operator's questions about it.
import Foundation
import Glibc
import WebhookClient
import WebhookCore
import WorkerCore

let usage = """
    NAME
        webhook-worker - hand spooled Installer.com events to their handlers, and inspect the spool

    SYNOPSIS
        webhook-worker drain [--config FILE] [--exec CMD | --forward URL] [options]
        webhook-worker status [--config FILE] [--json]
        webhook-worker failed [--config FILE] [--json]
        webhook-worker retry [--config FILE] [--json] ID... | --all
        webhook-worker prune [--config FILE] [--json]

    DESCRIPTION
        drain takes the spool's run lock (a second overlapping run says so and exits 0), takes
        back the claims of a run that died, then hands waiting events to their handlers oldest
        first, and stops claiming after --max-seconds or when nothing is due. It runs from a
        systemd timer (webhook-worker.timer) or cron. Events about one entity (organizationId
        and data.id) reach the handler in arrival order; a handler that succeeded for a dedupe
        key is never run again for it. A failure is retried after 1m x 3^(n-1), at most 6h,
        spread by 20 % (1m, 3m, 9m, 27m, 81m, 4h03m, 6h: about 12 h over 8 attempts); after
        the last attempt the event moves to failed/ with its attempt log. An event no route
        matches moves to skipped/; an unreadable file to quarantine/, never deleted.

        status shows counts per state, the oldest waiting age, the last run and the failures
        of the last 24 h. failed lists dead-lettered events with the reason of the last
        attempt. retry moves dead-lettered (or skipped) events back to waiting, due now, with a
        fresh attempt count. prune removes dedupe markers past retention, stale tmp/ files, and
        old skipped/ and done/ files (each drain also prunes a slice).

    OPTIONS
        --config FILE
            KEY=VALUE settings (systemd EnvironmentFile= format); WEBHOOK_SPOOL_DIR is required.
        --exec CMD
            run CMD with /bin/sh -c, the raw body on stdin and WEBHOOK_ID, WEBHOOK_EVENT,
            WEBHOOK_ATTEMPT, WEBHOOK_RECEIVED_AT, WEBHOOK_ORGANIZATION_ID, WEBHOOK_ENTITY_ID and
            WEBHOOK_KEY in its environment, in its own process group; exit 0 is success,
            anything else is retried (default WEBHOOK_EXEC).
        --forward URL
            POST the raw body with its original X-Webhook-Signature and X-Webhook-Id to an
            http:// URL; a 2xx is success (default WEBHOOK_FORWARD).
        --max-seconds N
            stop claiming after N seconds (default 50, so a minutely cron never piles up).
        --timeout DURATION
            kill a handler's process group after this long (default 30s).
        --attempts N
            attempts before an event moves to failed/ (default 8).
        --concurrency N
            handlers at once; one entity's events never run at once (default 4).
        --metrics-file FILE
            write Prometheus text-format metrics after the run (node_exporter's textfile collector).
        --json
            status, failed, retry, prune: machine-readable output.
        --all
            retry: every dead-lettered and skipped event.
        -h, --help
            this text.
        --version
            print the version.

    ENVIRONMENT
        WEBHOOK_EXEC, WEBHOOK_FORWARD
            the handler for events no route matches.
        WEBHOOK_ROUTE_NAME
            a route: PATTERN exec COMMAND or PATTERN forward URL, the most specific pattern
            winning, e.g. WEBHOOK_ROUTE_ORDERS=order.* exec /usr/local/bin/on-order.
        WEBHOOK_WORKER_ATTEMPTS, WEBHOOK_WORKER_TIMEOUT, WEBHOOK_WORKER_CONCURRENCY
            defaults of --attempts, --timeout and --concurrency.
        WEBHOOK_WORKER_MAX_SECONDS
            default of --max-seconds.
        WEBHOOK_RETRY_BASE, WEBHOOK_RETRY_MAX
            the first retry delay and the cap (default 1m and 6h).
        WEBHOOK_KEEP_DONE
            handled events kept in done/ (default 0).
        WEBHOOK_METRICS_FILE
            default of --metrics-file.

    FILES
        /etc/installer-webhooks/env
            the settings file of an installed host.
        SPOOL/worker/drain.lock
            the run lock; SPOOL/worker/ also holds the counters and the last run.
        SPOOL/failed/, SPOOL/attempts/
            dead-lettered events, and each event's attempt log.

    EXIT STATUS
        0 done (also when another drain is running), 64 bad usage, 78 bad configuration,
        73 the spool cannot be created, 71 the spool's owner could not be taken on, 1 retry
        could not move every id. Run as root on a spool that belongs to another user, every
        command first becomes that user, so nothing it creates is left owned by root.

    EXAMPLES
        Drain once into a command:
        $ webhook-worker drain --config /etc/installer-webhooks/env --exec /usr/local/bin/on-event
        What is waiting, and what failed:
        $ webhook-worker status --config /etc/installer-webhooks/env
        $ webhook-worker failed --config /etc/installer-webhooks/env
        Try every dead-lettered event again:
        $ webhook-worker retry --all --config /etc/installer-webhooks/env

    SEE ALSO
        webhook-fcgi(8), webhook-loadtest(1), /usr/share/doc/installer-webhooks/README.md.gz
    """

func fail(_ code: Int32, _ message: String) -> Never {
    FileHandle.standardError.write(Data("webhook-worker: \(message)\n".utf8))
    exit(code)
}

struct Options {
    var command = ""
    var configFile: String?
    var json = false
    var all = false
    var ids: [String] = []
    var exec: String?
    var forward: String?
    var maxSeconds: Int64?
    var timeoutMs: Int64?
    var attempts: Int?
    var concurrency: Int?
    var metricsFile: String?
}

func parse(_ args: [String]) -> Options {
    var o = Options()
    guard args.count >= 2 else { fail(64, "a command is required\n\(usage)") }
    o.command = args[1]
    if ["-h", "--help", "help"].contains(o.command) {
        print(usage)
        exit(0)
    }
    if o.command == "--version" {
        print("webhook-worker \(installerWebhooksVersion)")
        exit(0)
    }
    guard ["drain", "status", "failed", "retry", "prune"].contains(o.command) else {
        fail(64, "unknown command \(o.command)\n\(usage)")
    }
    var i = 2
    func value(_ flag: String) -> String {
        i += 1
        guard i < args.count else { fail(64, "\(flag) needs a value") }
        return args[i]
    }
    func number(_ flag: String, _ range: ClosedRange<Int>) -> Int {
        let v = value(flag)
        guard let n = Int(v), range.contains(n) else { fail(64, "\(flag) \(v): expected \(range.lowerBound) to \(range.upperBound)") }
        return n
    }
    while i < args.count {
        let a = args[i]
        switch a {
        case "-h", "--help":
            print(usage)
            exit(0)
        case "--config": o.configFile = value(a)
        case "--json": o.json = true
        case "--all": o.all = true
        case "--exec": o.exec = value(a)
        case "--forward": o.forward = value(a)
        case "--max-seconds": o.maxSeconds = Int64(number(a, 1...86400))
        case "--timeout":
            let v = value(a)
            guard let ms = DurationText.parseMilliseconds(v), ms >= 100 else { fail(64, "--timeout \(v): expected a duration such as 30s") }
            o.timeoutMs = ms
        case "--attempts": o.attempts = number(a, 1...100)
        case "--concurrency": o.concurrency = number(a, 1...256)
        case "--metrics-file": o.metricsFile = value(a)
        default:
            if o.command == "retry" && !a.hasPrefix("-") {
                o.ids.append(a)
            } else {
                fail(64, "unknown argument \(a) for \(o.command)\n\(usage)")
            }
        }
        i += 1
    }
    if o.command == "retry" && o.ids.isEmpty && !o.all { fail(64, "retry needs event ids or --all") }
    return o
}

func printJSON(_ object: Any) {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])) ?? Data("{}".utf8)
    FileHandle.standardOutput.write(data + Data("\n".utf8))
}

func age(_ seconds: Int64) -> String {
    if seconds < 120 { return "\(seconds) s" }
    if seconds < 7200 { return "\(seconds / 60) min" }
    if seconds < 172_800 { return "\(seconds / 3600) h" }
    return "\(seconds / 86400) d"
}

let options = parse(CommandLine.arguments)
let environment = ProcessInfo.processInfo.environment
var config: WorkerConfig
do {
    let (loaded, warnings) = try WorkerConfig.load(environment: environment, configFile: options.configFile)
    config = loaded
    for w in warnings { FileHandle.standardError.write(Data("webhook-worker: warning: \(w)\n".utf8)) }
} catch {
    fail(78, error.description)
}
if let v = options.exec { config.defaultAction = .exec(v) }
if let v = options.forward {
    guard let u = HTTPURL(v) else { fail(64, "--forward \(v): expected http://host[:port]/path") }
    config.defaultAction = .forward(u)
}
if let v = options.maxSeconds { config.maxSeconds = v }
if let v = options.timeoutMs { config.timeoutMilliseconds = v }
if let v = options.attempts { config.attempts = v }
if let v = options.concurrency { config.concurrency = v }
if let v = options.metricsFile { config.metricsFile = v }

umask(0o077)
do {
    // As root on the service user's spool: act as that user, so nothing this
    // run creates (markers, attempt logs, the run lock) is root's.
    try becomeSpoolOwner(spoolDir: config.spoolDir)
} catch {
    fail(71, "cannot become the spool's owner: \(error)")
}
do {
    try Spool(root: config.spoolDir).createTree()
} catch {
    fail(73, "spool \(config.spoolDir): \(error)")
}
let now = WallClock.system.nowMicros() / 1_000_000
if let warning = Spool(root: config.spoolDir).fileSystemWarning() {
    FileHandle.standardError.write(Data("webhook-worker: warning: \(warning)\n".utf8))
}

switch options.command {
case "drain":
    if config.defaultAction == nil && config.routes.isEmpty {
        fail(64, "drain needs --exec CMD, --forward URL or WEBHOOK_ROUTE_* routes")
    }
    let lock: RunLock?
    do { lock = try RunLock.take(spoolDir: config.spoolDir) } catch { fail(73, "run lock: \(error)") }
    guard let lock else {
        print("webhook-worker: another drain is running on \(config.spoolDir); nothing to do")
        exit(0)
    }
    let drain = Drain(config: config, logger: .stderr(program: "webhook-worker"), environment: environment)
    _ = drain.run()
    withExtendedLifetime(lock) {}
    exit(0)

case "status":
    let s = SpoolStatus.read(spoolDir: config.spoolDir, nowSeconds: now)
    if options.json {
        printJSON(s.json)
        exit(0)
    }
    print("spool \(config.spoolDir)")
    let labels = ["new": "waiting (new)", "defer": "retrying (defer)", "cur": "claimed (cur)", "failed": "dead (failed)"]
    for state in SpoolStatus.states {
        var line = (labels[state] ?? state).padding(toLength: 18, withPad: " ", startingAt: 0) + String(s.counts[state] ?? 0)
        if state == "defer" { line += " (\(s.deferredDue) due)" }
        print("  " + line)
    }
    print("oldest waiting: " + (s.oldestWaitingSeconds.map(age) ?? "none"))
    if let last = s.lastRun, let at = (last["finished_at"] as? NSNumber)?.int64Value {
        let n = { (k: String) in (last[k] as? NSNumber)?.intValue ?? 0 }
        print("last run: \(Timestamp.format(micros: at * 1_000_000)) (\(age(now - at)) ago): \(n("succeeded")) handled, "
            + "\(n("retried")) to retry, \(n("dead_lettered")) dead-lettered, \(n("skipped")) skipped")
    } else {
        print("last run: never")
    }
    print("failed attempts in the last 24 h: \(s.failuresLast24h)")

case "failed":
    let list = FailedEvent.list(spoolDir: config.spoolDir)
    if options.json {
        printJSON(list.map(\.json))
        exit(0)
    }
    if list.isEmpty { print("no dead-lettered events") }
    for f in list {
        let last = f.attempts.last
        print("\(f.id)  \(f.event)  \(f.attempts.count) attempts, last: \(last?.reason ?? "?")"
            + (last.map { " at " + Timestamp.format(micros: $0.at * 1_000_000) } ?? ""))
        if let detail = last?.detail, !detail.isEmpty {
            for line in detail.split(separator: "\n").suffix(3) { print("    \(line)") }
        }
    }

case "retry":
    let ids = options.all ? (listDirectory(config.spoolDir + "/failed") ?? []).sorted() : options.ids
    let (moved, errors) = Admin.retry(spoolDir: config.spoolDir, ids: ids, nowSeconds: now)
    if options.json {
        printJSON(["moved": moved, "errors": errors.map(\.description)])
    } else {
        print("\(moved.count) event(s) back to waiting" + (moved.isEmpty ? "" : ": " + moved.joined(separator: " ")))
        for e in errors { FileHandle.standardError.write(Data("webhook-worker: \(e)\n".utf8)) }
    }
    exit(errors.isEmpty ? 0 : 1)

case "prune":
    let counts = Admin.prune(config: config, nowSeconds: now)
    if options.json {
        printJSON(counts)
    } else {
        print(counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
    }

default:
    fail(64, usage)
}
