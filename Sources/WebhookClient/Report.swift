// The load report: text for the terminal, JSON for machines, SVG for people.
import Foundation
import WebhookCore

/// Renders a ``LoadResult``.
public enum LoadReport {
    /// The quantiles reported.
    public static let quantiles: [(String, Double)] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("max", 1)]

    static func ms(_ micros: UInt64) -> String { JSONText.number(Double(micros) / 1000) }

    /// The verdict line against the budget.
    public static func verdict(_ r: LoadResult, budgetMilliseconds: Int64) -> String {
        let budget = "\(JSONText.number(Double(budgetMilliseconds) / 1000)) s"
        if r.allWithinBudget {
            return "PASS: all \(r.sent) requests answered 2xx within the \(budget) budget "
                + "(p99 \(ms(r.histogram.value(atQuantile: 0.99))) ms, max \(ms(r.histogram.max)) ms)"
        }
        let non2xx = r.statuses.filter { !(200..<300).contains($0.key) }.values.reduce(0, +)
        var why: [String] = []
        if r.sent == 0 { why.append("nothing was sent") }
        if r.overBudget > 0 { why.append("\(r.overBudget) answered after the \(budget) budget") }
        if non2xx > 0 { why.append("\(non2xx) non-2xx answers") }
        if r.timeouts > 0 { why.append("\(r.timeouts) timeouts") }
        if r.transportErrors > 0 { why.append("\(r.transportErrors) transport errors") }
        return "FAIL: " + why.joined(separator: ", ") + " (of \(r.sent) requests)"
    }

    /// The terminal report.
    public static func text(_ r: LoadResult, options: LoadOptions) -> String {
        var out = ""
        let mode = options.rate.map { "open loop at \(JSONText.number($0))/s" } ?? "closed loop"
        out += "\(mode), \(options.connections) connections, \(JSONText.number(r.elapsedSeconds)) s measured\n"
        out += "requests   \(r.sent) sent, \(r.answered) answered, \(JSONText.number(r.throughput)) answers/s\n"
        out += "latency    " + quantiles.map { "\($0.0) \(ms(r.histogram.value(atQuantile: $0.1))) ms" }.joined(separator: "  ") + "\n"
        out += "statuses   " + r.statuses.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: "  ") + "\n"
        if r.duplicatesSent > 0 {
            out += "duplicates \(r.duplicatesSent) re-sent, \(r.duplicatesAnsweredDuplicate) answered duplicate"
            out += r.duplicatesAnsweredAccepted > 0 ? ", \(r.duplicatesAnsweredAccepted) ACCEPTED AGAIN\n" : "\n"
        }
        out += "errors     \(r.timeouts) timeouts, \(r.transportErrors) transport errors"
        out += r.errorSamples.isEmpty ? "\n" : " (\(r.errorSamples[0]))\n"
        out += verdict(r, budgetMilliseconds: options.budgetMilliseconds) + "\n"
        return out
    }

    /// The JSON report, histogram included.
    public static func json(_ r: LoadResult, options: LoadOptions, extra: [String: Any] = [:]) -> [String: Any] {
        var latency: [String: Any] = ["mean_ms": r.histogram.mean / 1000, "count": r.histogram.count]
        for (name, q) in quantiles { latency[name + "_ms"] = Double(r.histogram.value(atQuantile: q)) / 1000 }
        var d: [String: Any] = [
            "mode": options.rate == nil ? "closed" : "open", "rate": options.rate ?? NSNull(),
            "connections": options.connections, "measured_seconds": r.elapsedSeconds, "sent": r.sent,
            "answered": r.answered, "throughput_per_second": r.throughput, "latency": latency,
            "statuses": Dictionary(uniqueKeysWithValues: r.statuses.map { (String($0.key), $0.value) }),
            "over_budget": r.overBudget, "timeouts": r.timeouts, "transport_errors": r.transportErrors,
            "duplicates_sent": r.duplicatesSent, "duplicates_answered_duplicate": r.duplicatesAnsweredDuplicate,
            "duplicates_answered_accepted": r.duplicatesAnsweredAccepted, "budget_ms": options.budgetMilliseconds,
            "pass": r.allWithinBudget, "verdict": verdict(r, budgetMilliseconds: options.budgetMilliseconds),
            "histogram_us": r.histogram.buckets.map { [$0.low, $0.high, $0.count] },
            "per_second": r.perSecond.map { ["count": $0.count, "max_ms": Double($0.maxMicros) / 1000,
                "mean_ms": $0.count == 0 ? 0 : Double($0.sumMicros) / Double($0.count) / 1000] },
        ]
        for (k, v) in extra { d[k] = v }
        return d
    }

    /// An SVG with the percentile curve and a latency-over-time strip.
    public static func svg(_ r: LoadResult, options: LoadOptions, title: String) -> String {
        let width = 900.0
        let left = 70.0
        let plotWidth = width - left - 30
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"620\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"900\" height=\"620\" fill=\"white\"/>\n"
        s += "<text x=\"\(left)\" y=\"24\" font-size=\"15\">\(escape(title))</text>\n"
        s += "<text x=\"\(left)\" y=\"42\" fill=\"#555\">\(escape(verdict(r, budgetMilliseconds: options.budgetMilliseconds)))</text>\n"
        // Percentile curve: x is log10(1 / (1 - q)), so 90, 99, 99.9 % are evenly spaced.
        let top = 60.0
        let height = 300.0
        let maxX = 5.0
        let quantileMax = max(Double(r.histogram.max) / 1000, 0.001)
        let yMax = niceCeiling(quantileMax * 1.1)
        s += axes(left: left, top: top, width: plotWidth, height: height, yMax: yMax, label: "ack latency (ms)")
        for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].enumerated() {
            let x = left + Double(i) / maxX * plotWidth
            s += "<line x1=\"\(f(x))\" y1=\"\(f(top))\" x2=\"\(f(x))\" y2=\"\(f(top + height))\" stroke=\"#eee\"/>\n"
            s += "<text x=\"\(f(x))\" y=\"\(f(top + height + 16))\" text-anchor=\"middle\">\(label)</text>\n"
        }
        var points: [String] = []
        if r.histogram.count > 0 {
            for step in 0...250 {
                let xLog = Double(step) / 250 * maxX
                let q = min(1 - pow(10, -xLog), 1)
                let v = Double(r.histogram.value(atQuantile: q)) / 1000
                points.append("\(f(left + xLog / maxX * plotWidth)),\(f(top + height - v / yMax * height))")
            }
        }
        s += "<polyline fill=\"none\" stroke=\"#1f5fa8\" stroke-width=\"2\" points=\"\(points.joined(separator: " "))\"/>\n"
        let budgetMs = Double(options.budgetMilliseconds)
        if budgetMs <= yMax {
            let y = top + height - budgetMs / yMax * height
            s += "<line x1=\"\(f(left))\" y1=\"\(f(y))\" x2=\"\(f(left + plotWidth))\" y2=\"\(f(y))\" stroke=\"#c0392b\" stroke-dasharray=\"6 4\"/>\n"
            s += "<text x=\"\(f(left + plotWidth - 4))\" y=\"\(f(y - 4))\" text-anchor=\"end\" fill=\"#c0392b\">budget</text>\n"
        }
        s += "<text x=\"\(f(left + plotWidth / 2))\" y=\"\(f(top + height + 32))\" text-anchor=\"middle\">percentile</text>\n"
        // Strip: per-second maximum (bars) and mean (line) over the run.
        let stripTop = 420.0
        let stripHeight = 150.0
        let seconds = max(r.perSecond.count, 1)
        let stripMax = niceCeiling(max(Double(r.perSecond.map(\.maxMicros).max() ?? 1) / 1000 * 1.1, 0.001))
        s += axes(left: left, top: stripTop, width: plotWidth, height: stripHeight, yMax: stripMax, label: "per second (ms)")
        let barWidth = plotWidth / Double(seconds)
        var meanPoints: [String] = []
        for (i, sec) in r.perSecond.enumerated() {
            let x = left + Double(i) * barWidth
            let h = Double(sec.maxMicros) / 1000 / stripMax * stripHeight
            s += "<rect x=\"\(f(x))\" y=\"\(f(stripTop + stripHeight - h))\" width=\"\(f(max(barWidth - 1, 0.5)))\" height=\"\(f(h))\" fill=\"#9dbbe0\"/>\n"
            let mean = sec.count == 0 ? 0 : Double(sec.sumMicros) / Double(sec.count) / 1000
            meanPoints.append("\(f(x + barWidth / 2)),\(f(stripTop + stripHeight - mean / stripMax * stripHeight))")
        }
        s += "<polyline fill=\"none\" stroke=\"#1f5fa8\" stroke-width=\"1.5\" points=\"\(meanPoints.joined(separator: " "))\"/>\n"
        s += "<text x=\"\(f(left + plotWidth / 2))\" y=\"\(f(stripTop + stripHeight + 30))\" text-anchor=\"middle\">seconds into the run (bars: max, line: mean)</text>\n"
        for i in stride(from: 0, through: seconds, by: max(1, seconds / 10)) {
            let x = left + Double(i) * barWidth
            s += "<text x=\"\(f(x))\" y=\"\(f(stripTop + stripHeight + 14))\" text-anchor=\"middle\">\(i)</text>\n"
        }
        s += "</svg>\n"
        return s
    }

    private static func axes(left: Double, top: Double, width: Double, height: Double, yMax: Double, label: String) -> String {
        var s = "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(width))\" height=\"\(f(height))\" fill=\"none\" stroke=\"#999\"/>\n"
        for i in 0...4 {
            let v = yMax * Double(i) / 4
            let y = top + height - Double(i) / 4 * height
            s += "<line x1=\"\(f(left))\" y1=\"\(f(y))\" x2=\"\(f(left + width))\" y2=\"\(f(y))\" stroke=\"#eee\"/>\n"
            s += "<text x=\"\(f(left - 6))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(JSONText.number(v))</text>\n"
        }
        s += "<text transform=\"translate(\(f(left - 52)),\(f(top + height / 2))) rotate(-90)\" text-anchor=\"middle\">\(label)</text>\n"
        return s
    }

    static func niceCeiling(_ v: Double) -> Double {
        let p = pow(10, floor(log10(v)))
        for m in [1.0, 2, 2.5, 5, 10] where m * p >= v { return m * p }
        return 10 * p
    }

    private static func f(_ v: Double) -> String { JSONText.number(v) }

    private static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}

/// What `--verify-spool` found.
public struct SpoolVerification: Sendable, Equatable {
    /// Accepted unique events not in the spool.
    public var lost = 0
    /// Events in the spool more than once.
    public var doubled = 0
    /// Events in the spool the tester never sent.
    public var foreign = 0
    /// Events found in the spool.
    public var found = 0
    /// Files that are not readable records.
    public var unreadable = 0

    /// Whether the spool holds exactly what was accepted.
    public var clean: Bool { lost == 0 && doubled == 0 && foreign == 0 && unreadable == 0 }

    /// Checks the spool at `spoolDir` (every state a worker leaves an event in,
    /// so a worker that keeps handled events in done/ may run meanwhile) against
    /// what was accepted and sent.
    public static func check(spoolDir: String, accepted: Set<BodyHash>, sent: Set<BodyHash>) -> SpoolVerification {
        var v = SpoolVerification()
        var seen: [BodyHash: Int] = [:]
        var files: [String] = []
        for bucket in listDirectory(spoolDir + "/new") ?? [] {
            for name in listDirectory(spoolDir + "/new/" + bucket) ?? [] { files.append("new/\(bucket)/\(name)") }
        }
        for state in ["cur", "defer", "failed", "skipped", "done", "quarantine"] {
            for name in listDirectory(spoolDir + "/" + state) ?? [] { files.append("\(state)/\(name)") }
        }
        for file in files {
            guard let bytes = try? readWholeFile(spoolDir + "/" + file, limit: 80 << 20), let record = try? SpoolRecord.decode(bytes)
            else {
                v.unreadable += 1
                continue
            }
            v.found += 1
            seen[BodyHash(record.body), default: 0] += 1
        }
        for (hash, n) in seen {
            if n > 1 { v.doubled += 1 }
            if !sent.contains(hash) { v.foreign += 1 }
        }
        for hash in accepted where seen[hash] == nil { v.lost += 1 }
        return v
    }
}
