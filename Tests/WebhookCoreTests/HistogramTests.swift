import Foundation
import Testing
import WebhookClient

@Suite struct HistogramTests {
    /// Against the exact answer from a sorted array: within the 1/128 relative error.
    @Test(arguments: [1, 7, 42])
    func percentilesMatchASortedArrayOracle(_ seed: UInt64) {
        var rng = SplitMix(seed: seed)
        var h = Histogram()
        var values: [UInt64] = []
        for _ in 0..<50_000 {
            // A long-tailed mix: mostly milliseconds, some seconds, a few very large.
            let r = Double(rng.next() % 1_000_000) / 1_000_000
            let v = UInt64(exp(r * r * 20)) + UInt64(rng.next() % 300)
            values.append(v)
            h.record(v)
        }
        values.sort()
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            let exact = values[max(0, Int((q * Double(values.count)).rounded(.up)) - 1)]
            let got = h.value(atQuantile: q)
            let tolerance = max(1.0, Double(exact) / 128)
            #expect(abs(Double(got) - Double(exact)) <= tolerance, "q \(q): \(got) vs exact \(exact)")
        }
        #expect(h.count == 50_000)
        #expect(h.max == values.last)
        #expect(h.min == values.first)
    }

    @Test func mergingEqualsRecordingIntoOne() {
        var a = Histogram()
        var b = Histogram()
        var both = Histogram()
        for v: UInt64 in stride(from: 1, to: 2_000_000, by: 997) {
            if v % 2 == 0 { a.record(v) } else { b.record(v) }
            both.record(v)
        }
        a.merge(b)
        #expect(a == both)
    }

    @Test func bucketsCoverEveryValueOnce() {
        for v: UInt64 in [0, 1, 255, 256, 257, 511, 512, 1000, 65_535, 1 << 20, (1 << 36) - 1] {
            var h = Histogram()
            h.record(v)
            let bucket = h.buckets[0]
            #expect(bucket.low <= v && v <= bucket.high, "\(v) in [\(bucket.low), \(bucket.high)]")
            #expect(Double(bucket.high - bucket.low) <= max(0, Double(bucket.low) / 128), "\(v)")
        }
        var huge = Histogram()
        huge.record(UInt64.max)
        #expect(huge.max == Histogram.maxValue)
    }

    @Test func emptyHistogramAnswersZero() {
        #expect(Histogram().value(atQuantile: 0.99) == 0)
        #expect(Histogram().mean == 0)
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
