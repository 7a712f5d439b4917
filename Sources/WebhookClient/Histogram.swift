// A log-bucketed latency histogram in the manner of HdrHistogram: values below
// 2^8 µs are exact; above, each power of two is split into 128 buckets, so
// any recorded value is known to within 1/128 (0.8 %) whatever its size. Memory
// is fixed (a few thousand counters), recording is O(1), and histograms from
// several threads merge by adding counts.

/// Latencies in microseconds.
public struct Histogram: Sendable, Equatable {
    static let precisionBits = 8
    static let linear = 1 << precisionBits
    static let half = 1 << (precisionBits - 1)
    /// Largest value kept apart; larger ones are recorded as this (about 19 hours).
    public static let maxValue: UInt64 = 1 << 36
    static let bucketCount = linear + (36 - precisionBits + 1) * half

    private(set) var counts: [UInt64]
    /// Values recorded.
    public private(set) var count: UInt64 = 0
    /// The largest value recorded, exactly.
    public private(set) var max: UInt64 = 0
    /// The smallest value recorded, exactly.
    public private(set) var min: UInt64 = .max
    private var sum: Double = 0

    /// An empty histogram.
    public init() {
        counts = [UInt64](repeating: 0, count: Self.bucketCount)
    }

    static func index(_ value: UInt64) -> Int {
        if value < UInt64(linear) { return Int(value) }
        let magnitude = 63 - value.leadingZeroBitCount
        let shift = magnitude - (precisionBits - 1)
        let top = Int(value >> UInt64(shift))
        return linear + (magnitude - precisionBits) * half + (top - half)
    }

    /// The highest value that falls in bucket `index`.
    static func upperBound(_ index: Int) -> UInt64 {
        if index < linear { return UInt64(index) }
        let group = (index - linear) / half
        let top = UInt64((index - linear) % half + half)
        let shift = UInt64(group + 1)
        return ((top + 1) << shift) - 1
    }

    /// The lowest value that falls in bucket `index`.
    static func lowerBound(_ index: Int) -> UInt64 {
        if index < linear { return UInt64(index) }
        let group = (index - linear) / half
        let top = UInt64((index - linear) % half + half)
        return top << UInt64(group + 1)
    }

    /// Records one value.
    public mutating func record(_ micros: UInt64) {
        let v = Swift.min(micros, Self.maxValue)
        counts[Self.index(v)] += 1
        count += 1
        sum += Double(v)
        if v > max { max = v }
        if v < min { min = v }
    }

    /// Adds `other`'s values to this one.
    public mutating func merge(_ other: Histogram) {
        for i in 0..<counts.count { counts[i] += other.counts[i] }
        count += other.count
        sum += other.sum
        max = Swift.max(max, other.max)
        min = Swift.min(min, other.min)
    }

    /// The mean of the recorded values.
    public var mean: Double { count == 0 ? 0 : sum / Double(count) }

    /// The value at quantile `q` (0...1): the smallest bucket bound at or above
    /// which a fraction `q` of the values lie; the exact maximum for q = 1.
    public func value(atQuantile q: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        if q >= 1 { return max }
        let rank = Swift.max(1, UInt64((q * Double(count)).rounded(.up)))
        var seen: UInt64 = 0
        for (i, c) in counts.enumerated() where c > 0 {
            seen += c
            if seen >= rank { return Swift.min(Self.upperBound(i), max) }
        }
        return max
    }

    /// Non-empty buckets as (lowest value, highest value, count).
    public var buckets: [(low: UInt64, high: UInt64, count: UInt64)] {
        counts.enumerated().filter { $0.element > 0 }.map { (Self.lowerBound($0.offset), Self.upperBound($0.offset), $0.element) }
    }
}
