// webhook-loadtest: signed load and single deliveries against a receive endpoint.
import Foundation
import Glibc
import WebhookClient
import WebhookCore

let usage = """
    NAME
        webhook-loadtest - signed load, capacity search and test deliveries for a webhook endpoint

    SYNOPSIS
        webhook-loadtest run --url URL --secret-file FILE [options]
        webhook-loadtest send --url URL --secret-file FILE [--event TYPE | --body FILE] [--retry-schedule]
        webhook-loadtest fill --spool DIR [--events N] [--markers M]

    DESCRIPTION
        run sends signed Installer.com events and measures each acknowledgement against the
        sender's budget. With --rate the load is open loop: every request has a fixed
        scheduled send time and its latency counts from that time, so a stalled server shows
        the stall in every request that waited for it. Without --rate, each connection sends
        again as soon as it is answered. The report gives throughput, p50/p90/p99/p99.9/max,
        status counts, duplicates answered as duplicates, timeouts, transport errors and a
        verdict against the budget.

        send makes one signed delivery, as Installer.com does, and prints the status, the
        latency and the answer: the local twin of the sender's test button.

        fill writes N waiting events (each with the marker the receive path leaves) and M
        further dedupe markers straight into a spool, without HTTP and without fsync, to
        measure a large spool.

    OPTIONS
        --url URL
            the endpoint (default http://127.0.0.1:8080/webhooks/installer).
        --secret-file FILE
            the secrets, one per line; the first signs (default WEBHOOK_SECRET_FILE).
        --rate R
            run: R requests/s in total, open loop.
        --connections C
            run: keep-alive connections, one thread each (default 32).
        --duration D
            run: measured time (default 10s); durations read 5s, 500ms, 2m, or seconds.
        --warmup D
            run: sent but not measured, before the measured time (default 0).
        --duplicates F
            run: share of requests (0 to 1) that re-send an earlier event byte for byte.
        --mix T1,T2,...
            run: event types to draw from (default all twelve of the reference).
        --budget D
            run: the sender's budget (default 5s).
        --timeout D
            a request with no answer after this long is a timeout (run: 2 x budget; send: 10s).
        --json FILE
            run: write the figures and the histogram as JSON.
        --plot FILE
            run: write an SVG with the percentile curve and latency over time.
        --verify-spool DIR
            run: afterwards, check that the spool holds every accepted event exactly once and
            nothing the run did not send (needs a spool no worker deletes from meanwhile).
        --find-capacity
            run: step the rate up (from --rate, default 50/s, x1.5 per step of --duration) until
            p99 passes --target or errors appear; report the highest rate that held.
        --target D
            run: the p99 target of --find-capacity (default 1s).
        --event TYPE
            send: a fresh sample of TYPE (default order.created); one of
            \(EventSamples.types.joined(separator: " ")).
        --body FILE
            send: FILE's bytes exactly instead of a sample.
        --retry-schedule
            send: on a non-2xx or no answer, retry as the sender does (after 1m, 5m, 30m, 2h,
            12h) and report which attempt succeeded.
        --time-scale S
            send: multiply the retry delays by S (0.001 makes 1 min 60 ms).
        --spool DIR, --events N, --markers M
            fill: the spool, and how many events and extra markers to write.
        -h, --help
            this text.
        --version
            print the version.

    EXIT STATUS
        0 when every request got a 2xx within the budget (send: a 2xx), 1 otherwise, 2 on bad usage.

    EXAMPLES
        A test delivery to an installed host:
        $ webhook-loadtest send --url https://example.com/webhooks/installer --secret-file /etc/installer-webhooks/secret
        500 events/s for 30 s, 5 % of them repeats, with a plot:
        $ webhook-loadtest run --url http://127.0.0.1:8080/webhooks/installer --secret-file secret --rate 500 --duration 30s --duplicates 0.05 --plot run.svg
        The highest rate with p99 under 1 s:
        $ webhook-loadtest run --url http://127.0.0.1:8080/webhooks/installer --secret-file secret --find-capacity

    SEE ALSO
        webhook-fcgi(8), webhook-worker(8)
    """

func die(_ message: String) -> Never {
    FileHandle.standardError.write(Data("webhook-loadtest: \(message)\n".utf8))
    exit(2)
}

struct Arguments {
    var values: [String: String] = [:]
    var flags: Set<String> = []

    init(_ args: ArraySlice<String>, valued: Set<String>, flags allowed: Set<String>) {
        var i = args.startIndex
        while i < args.endIndex {
            let a = args[i]
            if a == "-h" || a == "--help" {
                print(usage)
                exit(0)
            }
            if valued.contains(a) {
                i += 1
                guard i < args.endIndex else { die("\(a) needs a value") }
                values[a] = args[i]
            } else if allowed.contains(a) {
                flags.insert(a)
            } else {
                die("unknown argument \(a)\n\(usage)")
            }
            i += 1
        }
    }

    func duration(_ flag: String, default d: Int64) -> Int64 {
        guard let v = values[flag] else { return d }
        guard let ms = DurationText.parseMilliseconds(v), ms > 0 else { die("\(flag) \(v): expected a duration such as 5s, 500ms or 2m") }
        return ms
    }

    func number(_ flag: String) -> Double? {
        guard let v = values[flag] else { return nil }
        guard let n = Double(v), n.isFinite, n >= 0 else { die("\(flag) \(v): expected a number") }
        return n
    }

    func endpoint() -> (HTTPURL, [[UInt8]]) {
        let text = values["--url"] ?? "http://127.0.0.1:8080/webhooks/installer"
        guard let url = HTTPURL(text) else { die("--url \(text): expected http://host[:port]/path") }
        guard let file = values["--secret-file"] ?? ProcessInfo.processInfo.environment["WEBHOOK_SECRET_FILE"] else {
            die("--secret-file is required (or set WEBHOOK_SECRET_FILE)")
        }
        do { return (url, try ReceiverConfig.loadSecrets(from: file)) } catch { die(error.description) }
    }
}

func write(_ path: String, _ data: Data) {
    guard FileManager.default.createFile(atPath: path, contents: data) else { die("cannot write \(path)") }
}

func runLoad(_ args: ArraySlice<String>) -> Int32 {
    let a = Arguments(
        args,
        valued: ["--url", "--secret-file", "--rate", "--connections", "--duration", "--warmup", "--duplicates", "--mix",
            "--budget", "--timeout", "--json", "--plot", "--verify-spool", "--target"],
        flags: ["--find-capacity"])
    let (url, secrets) = a.endpoint()
    var o = LoadOptions(url: url, secrets: secrets)
    o.rate = a.number("--rate")
    if let r = o.rate, r <= 0 { die("--rate must be above 0") }
    if let c = a.number("--connections") {
        guard c >= 1, c <= 4096, c == c.rounded() else { die("--connections: expected 1 to 4096") }
        o.connections = Int(c)
    }
    o.durationMilliseconds = a.duration("--duration", default: 10_000)
    o.warmupMilliseconds = a.values["--warmup"] == nil ? 0 : a.duration("--warmup", default: 0)
    if let d = a.number("--duplicates") {
        guard d <= 1 else { die("--duplicates: expected a fraction from 0 to 1") }
        o.duplicates = d
    }
    if let m = a.values["--mix"] {
        o.mix = m.split(separator: ",").map { String($0).trimmingSpaces() }.filter { !$0.isEmpty }
        guard !o.mix.isEmpty else { die("--mix: expected event types, e.g. order.created,booking.updated") }
    }
    o.budgetMilliseconds = a.duration("--budget", default: 5000)
    o.timeoutMilliseconds = a.duration("--timeout", default: 2 * o.budgetMilliseconds)
    o.trackEvents = a.values["--verify-spool"] != nil

    if a.flags.contains("--find-capacity") {
        return findCapacity(o, target: a.duration("--target", default: 1000), json: a.values["--json"])
    }
    let result = LoadGenerator.run(o)
    print(LoadReport.text(result, options: o), terminator: "")
    var extra: [String: Any] = [:]
    var spoolClean = true
    if let dir = a.values["--verify-spool"] {
        let v = SpoolVerification.check(spoolDir: dir, accepted: result.acceptedEvents, sent: result.sentEvents)
        print("spool      \(v.found) events: \(v.lost) lost, \(v.doubled) doubled, \(v.foreign) foreign, \(v.unreadable) unreadable"
            + " (\(result.acceptedEvents.count) accepted)")
        extra["spool"] = ["found": v.found, "lost": v.lost, "doubled": v.doubled, "foreign": v.foreign, "unreadable": v.unreadable]
        spoolClean = v.clean
    }
    if let path = a.values["--json"] {
        let object = LoadReport.json(result, options: o, extra: extra)
        write(path, (try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])) ?? Data())
    }
    if let path = a.values["--plot"] {
        write(path, Data(LoadReport.svg(result, options: o, title: "webhook-loadtest: \(url.hostHeader)\(url.path)").utf8))
    }
    return result.allWithinBudget && spoolClean ? 0 : 1
}

func findCapacity(_ base: LoadOptions, target: Int64, json: String?) -> Int32 {
    var rate = base.rate ?? 50
    var best: Double? = nil
    var steps: [[String: Any]] = []
    print("finding capacity: p99 target \(JSONText.number(Double(target) / 1000)) s, \(base.connections) connections, "
        + "\(JSONText.number(Double(base.durationMilliseconds) / 1000)) s per step")
    for _ in 0..<25 {
        var o = base
        o.rate = rate
        let r = LoadGenerator.run(o)
        let p99 = r.histogram.value(atQuantile: 0.99)
        let errors = r.timeouts + r.transportErrors + r.statuses.filter { !(200..<300).contains($0.key) }.values.reduce(0, +)
        let held = errors == 0 && p99 <= UInt64(target) * 1000 && r.sent > 0
            && r.throughput >= 0.95 * rate
        print("  \(JSONText.number(rate))/s: \(JSONText.number(r.throughput)) answers/s, p99 \(JSONText.number(Double(p99) / 1000)) ms, "
            + "\(errors) errors -> \(held ? "held" : "did not hold")")
        steps.append(["rate": rate, "throughput": r.throughput, "p99_ms": Double(p99) / 1000, "errors": errors, "held": held])
        if !held { break }
        best = rate
        rate *= 1.5
    }
    if let best {
        print("capacity: \(JSONText.number(best)) events/s held inside a p99 of \(JSONText.number(Double(target) / 1000)) s")
    } else {
        print("capacity: not even the first step held")
    }
    if let json {
        let object: [String: Any] = ["capacity_per_second": best ?? NSNull(), "target_p99_ms": target, "steps": steps]
        write(json, (try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])) ?? Data())
    }
    return best == nil ? 1 : 0
}

/// The sender's documented retry delays, in minutes after the previous attempt.
let senderRetryMinutes: [Double] = [1, 5, 30, 120, 720]

func runSend(_ args: ArraySlice<String>) -> Int32 {
    let a = Arguments(
        args, valued: ["--url", "--secret-file", "--event", "--body", "--timeout", "--time-scale"], flags: ["--retry-schedule"])
    let (url, secrets) = a.endpoint()
    let body: [UInt8]
    if let file = a.values["--body"] {
        do { body = try readWholeFile(file, limit: 64 << 20) } catch { die("--body \(file): \(error)") }
    } else {
        body = EventSamples.payload(type: a.values["--event"] ?? "order.created")
    }
    let timeout = Int(a.duration("--timeout", default: 10_000))
    let scale = a.number("--time-scale") ?? 1
    let deliverer = Deliverer(url: url, secrets: secrets)
    let connection = HTTPConnection(url: url)
    let attempts = a.flags.contains("--retry-schedule") ? senderRetryMinutes.count + 1 : 1
    for attempt in 1...attempts {
        if attempt > 1 {
            let delayMs = senderRetryMinutes[attempt - 2] * 60_000 * scale
            print("waiting \(JSONText.number(delayMs / 1000)) s before attempt \(attempt)")
            LoadGenerator.sleep(until: monotonicNanos() + UInt64(delayMs * 1_000_000))
        }
        let started = monotonicNanos()
        let prefix = attempts > 1 ? "attempt \(attempt): " : ""
        do {
            let response = try deliverer.send(body, on: connection, timeoutMilliseconds: timeout)
            let ms = Double(monotonicNanos() - started) / 1e6
            print(prefix + "status \(response.status), \(JSONText.number(ms)) ms, \(body.count) bytes sent")
            print(response.text.hasSuffix("\n") ? String(response.text.dropLast()) : response.text)
            if (200..<300).contains(response.status) {
                if attempts > 1 { print("delivered on attempt \(attempt) of \(attempts)") }
                return 0
            }
        } catch {
            print(prefix + "no answer after \(JSONText.number(Double(monotonicNanos() - started) / 1e6)) ms: \(error)")
        }
    }
    if attempts > 1 { print("not delivered after \(attempts) attempts: the sender would mark it failed") }
    return 1
}

func runFill(_ args: ArraySlice<String>) -> Int32 {
    let a = Arguments(args, valued: ["--spool", "--events", "--markers"], flags: [])
    guard let dir = a.values["--spool"] else { die("--spool DIR is required") }
    let events = Int(a.number("--events") ?? 0)
    let markers = Int(a.number("--markers") ?? 0)
    let spool: Spool
    do {
        try Spool(root: dir).createTree()
        spool = try Spool(root: dir, durability: .off)
    } catch { die("spool \(dir): \(error)") }
    let now = WallClock.system.nowMicros()
    let secret = [Array("fill".utf8)]
    let signer = SignatureVerifier(secrets: secret)
    for i in 0..<events {
        // Spread over the last days, one bucket a minute, oldest first.
        let received = now - Int64(events - i) * 100_000
        let body = EventSamples.payload(type: EventSamples.types[i % EventSamples.types.count], sequence: i, nowMicros: received)
        let id = Spool.newId(receivedAtMicros: received)
        let record = SpoolRecord(
            id: id, key: Hex.encode(Crypto.sha256(body)), event: EventSamples.types[i % EventSamples.types.count],
            receivedAtMicros: received, remoteAddr: "127.0.0.1", requestId: "fill", organizationId: nil, entityId: nil,
            timestamp: nil, headers: [("x-webhook-signature", signer.sign(body))], body: body)
        do {
            try spool.publish(staged: try spool.stage(record), as: Spool.waitingPath(id: id, receivedAtMicros: received))
            // The marker the receive path would have left.
            let m = try spool.lockStore.acquire(key: record.key, deadline: Deadline(millisecondsFromNow: 1000), nowSeconds: 0)
            try spool.lockStore.markCommitted(m, id: id, expiresAt: received / 1_000_000 + 7 * 86400)
            spool.lockStore.release(m)
        } catch { die("writing event \(i): \(error)") }
        if i > 0 && i % 100_000 == 0 { print("  \(i) events") }
    }
    let store = spool.lockStore
    let expires = now / 1_000_000 + 7 * 86400
    for i in 0..<markers {
        var seed = Array("marker-\(i)".utf8)
        seed.append(contentsOf: Crypto.randomBytes(4))
        let key = Hex.encode(Crypto.sha256(seed))
        do {
            let m = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 1000), nowSeconds: 0)
            try store.markCommitted(m, id: "fill-\(i)", expiresAt: expires)
            store.release(m)
        } catch { die("writing marker \(i): \(error)") }
        if i > 0 && i % 1_000_000 == 0 { print("  \(i) markers") }
    }
    print("filled \(dir): \(events) waiting events, \(markers) markers")
    return 0
}

let arguments = CommandLine.arguments
guard arguments.count >= 2 else { die("a command is required\n\(usage)") }
switch arguments[1] {
case "run": exit(runLoad(arguments.dropFirst(2)))
case "send": exit(runSend(arguments.dropFirst(2)))
case "fill": exit(runFill(arguments.dropFirst(2)))
case "-h", "--help", "help":
    print(usage)
    exit(0)
case "--version":
    print("webhook-loadtest \(installerWebhooksVersion)")
    exit(0)
default: die("unknown command \(arguments[1])\n\(usage)")
}
