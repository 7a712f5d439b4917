// Time sources. Wall-clock time is for records and replay checks; the monotonic
// clock is for deadlines and latency, so a clock step never shortens a wait.
import Glibc

/// Wall-clock time as whole microseconds since the Unix epoch.
public struct WallClock: Sendable {
    /// The current wall-clock reading; tests replace it to move time.
    public var nowMicros: @Sendable () -> Int64

    /// The system clock.
    public static let system = WallClock {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000
    }

    /// A clock fixed at `micros`.
    public static func fixed(_ micros: Int64) -> WallClock {
        WallClock { micros }
    }

    /// Creates a clock that reads `nowMicros`.
    public init(nowMicros: @escaping @Sendable () -> Int64) {
        self.nowMicros = nowMicros
    }
}

/// Monotonic nanoseconds, for deadlines and latencies.
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// A point on the monotonic clock after which a request must give up.
public struct Deadline: Sendable {
    /// Monotonic nanoseconds at which the deadline passes.
    public let atNanos: UInt64

    /// A deadline `milliseconds` from now.
    public init(millisecondsFromNow milliseconds: Int) {
        atNanos = monotonicNanos() + UInt64(max(0, milliseconds)) * 1_000_000
    }

    /// Nanoseconds left, zero once passed.
    public var remainingNanos: UInt64 {
        let now = monotonicNanos()
        return now >= atNanos ? 0 : atNanos - now
    }

    /// Whether the deadline has passed.
    public var hasPassed: Bool { remainingNanos == 0 }
}

/// Sleeps for `nanos`, resuming after signals.
func sleepNanos(_ nanos: UInt64) {
    var request = timespec(tv_sec: Int(nanos / 1_000_000_000), tv_nsec: Int(nanos % 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR {
        request = remaining
    }
}
