// Signed load at a receive endpoint, with acknowledgement latency measured the
// way the sender experiences it.
//
// Open loop (--rate): every request has a scheduled send time fixed in advance,
// spread evenly over the connections, and its latency is measured from that
// time, not from when it was actually sent. A server that stalls therefore
// shows the stall in every request that had to wait for it, instead of hiding
// it by slowing the tester down (the coordinated-omission mistake wrk makes and
// wrk2 corrects). Closed loop (no --rate): each connection sends the next
// request as soon as the last one is answered.
import Foundation
import Glibc
import WebhookCore

/// The first 128 bits of a body's SHA-256: enough to tell events apart.
public struct BodyHash: Hashable, Sendable {
    let a: UInt64
    let b: UInt64

    /// The hash of `body`.
    public init(_ body: [UInt8]) {
        let d = Crypto.sha256(body)
        var a: UInt64 = 0
        var b: UInt64 = 0
        for i in 0..<8 {
            a = a << 8 | UInt64(d[i])
            b = b << 8 | UInt64(d[8 + i])
        }
        self.a = a
        self.b = b
    }
}

/// What to send, how fast and for how long.
public struct LoadOptions: Sendable {
    /// The endpoint.
    public var url: HTTPURL
    /// Secrets; the first signs.
    public var secrets: [[UInt8]]
    /// Requests per second in total (open loop); nil for closed loop.
    public var rate: Double?
    /// Keep-alive connections, one thread each.
    public var connections = 32
    /// Measured time.
    public var durationMilliseconds: Int64 = 10_000
    /// Time before measuring starts (sent, not recorded).
    public var warmupMilliseconds: Int64 = 0
    /// Share of requests that re-send an earlier event byte for byte.
    public var duplicates = 0.0
    /// Event types to draw from.
    public var mix = EventSamples.types
    /// The sender's budget.
    public var budgetMilliseconds: Int64 = 5000
    /// A request without an answer after this long counts as a timeout.
    public var timeoutMilliseconds: Int64 = 10_000
    /// Keep the hash of every event sent and accepted (for --verify-spool).
    public var trackEvents = true

    /// Options for `url` signed with `secrets`.
    public init(url: HTTPURL, secrets: [[UInt8]]) {
        self.url = url
        self.secrets = secrets
    }
}

/// Latency by second of the run, for the time strip.
public struct SecondStats: Sendable, Equatable {
    /// Requests whose scheduled time fell in this second.
    public var count: UInt64 = 0
    /// Their largest latency, µs.
    public var maxMicros: UInt64 = 0
    /// Sum of their latencies, µs.
    public var sumMicros: UInt64 = 0
}

/// What a run measured.
public struct LoadResult: Sendable {
    /// Ack latency of measured requests, µs.
    public var histogram = Histogram()
    /// Answers by HTTP status (measured requests).
    public var statuses: [Int: UInt64] = [:]
    /// Measured requests sent.
    public var sent: UInt64 = 0
    /// Measured requests answered (any status).
    public var answered: UInt64 = 0
    /// Measured 2xx answers later than the budget.
    public var overBudget: UInt64 = 0
    /// Measured requests with no answer in time.
    public var timeouts: UInt64 = 0
    /// Measured requests that failed at the transport.
    public var transportErrors: UInt64 = 0
    /// Re-sends of earlier events (measured).
    public var duplicatesSent: UInt64 = 0
    /// Re-sends answered `duplicate`.
    public var duplicatesAnsweredDuplicate: UInt64 = 0
    /// Re-sends answered `accepted`: the receiver stored an event twice.
    public var duplicatesAnsweredAccepted: UInt64 = 0
    /// Seconds measured.
    public var elapsedSeconds = 0.0
    /// Latency by second.
    public var perSecond: [SecondStats] = []
    /// Every unique event (warm-up included) answered 2xx, by body hash.
    public var acceptedEvents: Set<BodyHash> = []
    /// Every unique event sent (warm-up included).
    public var sentEvents: Set<BodyHash> = []
    /// A sample of transport error messages.
    public var errorSamples: [String] = []

    /// Creates an empty result.
    public init() {}

    /// Answers per second over the measured time.
    public var throughput: Double { elapsedSeconds > 0 ? Double(answered) / elapsedSeconds : 0 }

    /// Whether every measured request got a 2xx within the budget.
    public var allWithinBudget: Bool {
        sent > 0 && timeouts == 0 && transportErrors == 0 && overBudget == 0
            && statuses.allSatisfy { (200..<300).contains($0.key) }
    }

    mutating func merge(_ o: LoadResult) {
        histogram.merge(o.histogram)
        for (k, v) in o.statuses { statuses[k, default: 0] += v }
        sent += o.sent
        answered += o.answered
        overBudget += o.overBudget
        timeouts += o.timeouts
        transportErrors += o.transportErrors
        duplicatesSent += o.duplicatesSent
        duplicatesAnsweredDuplicate += o.duplicatesAnsweredDuplicate
        duplicatesAnsweredAccepted += o.duplicatesAnsweredAccepted
        if perSecond.count < o.perSecond.count {
            perSecond.append(contentsOf: [SecondStats](repeating: SecondStats(), count: o.perSecond.count - perSecond.count))
        }
        for (i, s) in o.perSecond.enumerated() {
            perSecond[i].count += s.count
            perSecond[i].maxMicros = max(perSecond[i].maxMicros, s.maxMicros)
            perSecond[i].sumMicros += s.sumMicros
        }
        acceptedEvents.formUnion(o.acceptedEvents)
        sentEvents.formUnion(o.sentEvents)
        if errorSamples.count < 5 { errorSamples.append(contentsOf: o.errorSamples.prefix(5 - errorSamples.count)) }
    }
}

/// Runs load.
public enum LoadGenerator {
    /// Sends load per `options` and returns the merged measurements.
    public static func run(_ options: LoadOptions) -> LoadResult {
        let connections = max(1, options.connections)
        let startNanos = monotonicNanos() + 20_000_000
        let measureFrom = startNanos + UInt64(options.warmupMilliseconds) * 1_000_000
        let endNanos = measureFrom + UInt64(options.durationMilliseconds) * 1_000_000
        let results = ResultBox(count: connections)
        let group = DispatchGroup()
        for c in 0..<connections {
            group.enter()
            let t = Thread {
                let r = runConnection(
                    index: c, of: connections, options: options, start: startNanos, measureFrom: measureFrom, end: endNanos)
                results.set(c, r)
                group.leave()
            }
            t.stackSize = 1 << 20
            t.start()
        }
        group.wait()
        var total = LoadResult()
        for r in results.all { total.merge(r) }
        total.elapsedSeconds = Double(endNanos - measureFrom) / 1e9
        return total
    }

    private final class ResultBox: @unchecked Sendable {
        private let lock = NSLock()
        private var items: [LoadResult]
        init(count: Int) { items = [LoadResult](repeating: LoadResult(), count: count) }
        func set(_ i: Int, _ r: LoadResult) { lock.withLock { items[i] = r } }
        var all: [LoadResult] { lock.withLock { items } }
    }

    /// Sleeps until the monotonic clock reads `nanos`.
    public static func sleep(until nanos: UInt64) {
        let now = monotonicNanos()
        guard nanos > now else { return }
        let d = nanos - now
        var t = timespec(tv_sec: Int(d / 1_000_000_000), tv_nsec: Int(d % 1_000_000_000))
        var rest = timespec()
        while nanosleep(&t, &rest) != 0 && errno == EINTR { t = rest }
    }

    private static func runConnection(
        index: Int, of connections: Int, options: LoadOptions, start: UInt64, measureFrom: UInt64, end: UInt64
    ) -> LoadResult {
        var result = LoadResult()
        let deliverer = Deliverer(url: options.url, secrets: options.secrets)
        let connection = HTTPConnection(url: options.url)
        var recent: [[UInt8]] = []
        var factory = EventFactory()
        let interval = options.rate.map { Double(connections) / $0 * 1e9 }
        var k = 0
        var nextClosed = start
        let mix = options.mix.isEmpty ? EventSamples.types : options.mix
        while true {
            let scheduled: UInt64
            if let interval {
                scheduled = start + UInt64((Double(k * connections + index) / Double(connections)) * interval)
            } else {
                scheduled = max(nextClosed, start)
            }
            k += 1
            if scheduled >= end { break }
            sleep(until: scheduled)
            let measured = scheduled >= measureFrom
            let duplicate = !recent.isEmpty && options.duplicates > 0 && Double.random(in: 0..<1, using: &factory.rng) < options.duplicates
            let body: [UInt8]
            if duplicate {
                body = recent[Int.random(in: 0..<recent.count, using: &factory.rng)]
            } else {
                let type = mix[Int.random(in: 0..<mix.count, using: &factory.rng)]
                body = factory.payload(type: type, sequence: k)
                if options.trackEvents { result.sentEvents.insert(BodyHash(body)) }
            }
            if measured {
                result.sent += 1
                if duplicate { result.duplicatesSent += 1 }
            }
            let sentAt = monotonicNanos()
            do {
                let response = try deliverer.send(body, on: connection, timeoutMilliseconds: Int(options.timeoutMilliseconds))
                let done = monotonicNanos()
                // Open loop: from the scheduled time; closed loop: from the send.
                let latency = (done - (interval == nil ? sentAt : scheduled)) / 1000
                let ok = (200..<300).contains(response.status)
                if ok && !duplicate {
                    if options.trackEvents { result.acceptedEvents.insert(BodyHash(body)) }
                    if options.duplicates > 0 {
                        recent.append(body)
                        if recent.count > 256 { recent.removeFirst() }
                    }
                }
                if measured {
                    result.answered += 1
                    result.statuses[response.status, default: 0] += 1
                    result.histogram.record(latency)
                    if ok && latency > UInt64(options.budgetMilliseconds) * 1000 { result.overBudget += 1 }
                    if duplicate && ok {
                        if response.body.firstRange(of: Array("\"duplicate\"".utf8)) != nil { result.duplicatesAnsweredDuplicate += 1 }
                        if response.body.firstRange(of: Array("\"accepted\"".utf8)) != nil { result.duplicatesAnsweredAccepted += 1 }
                    }
                    let second = Int((scheduled - measureFrom) / 1_000_000_000)
                    while result.perSecond.count <= second { result.perSecond.append(SecondStats()) }
                    result.perSecond[second].count += 1
                    result.perSecond[second].maxMicros = max(result.perSecond[second].maxMicros, latency)
                    result.perSecond[second].sumMicros += latency
                }
                nextClosed = done
            } catch {
                if measured {
                    if case .timeout = error { result.timeouts += 1 } else { result.transportErrors += 1 }
                    if result.errorSamples.count < 5 { result.errorSamples.append(error.description) }
                    // What never got an answer still cost the sender its budget.
                    result.histogram.record((monotonicNanos() - (interval == nil ? sentAt : scheduled)) / 1000)
                }
                nextClosed = monotonicNanos()
                if case .connect = error { sleep(until: monotonicNanos() + 10_000_000) }
            }
        }
        return result
    }
}
