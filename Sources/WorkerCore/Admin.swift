// Read-only views of the spool (status, failed) and the operator's commands
// (retry, prune), shared by webhook-worker and the metrics file.
import Foundation
import Glibc
import WebhookCore

/// Counts and ages read off the spool tree.
public struct SpoolStatus {
    /// Files per state directory (`new` counts every bucket).
    public var counts: [String: Int] = [:]
    /// Deferred events already due.
    public var deferredDue = 0
    /// Age in seconds of the oldest event in new/ or defer/, nil when none waits.
    public var oldestWaitingSeconds: Int64?
    /// The last run's summary, as written by drain.
    public var lastRun: [String: Any]?
    /// Failed attempts in the last 24 hours.
    public var failuresLast24h = 0

    /// The states reported, in order.
    public static let states = ["new", "defer", "cur", "failed", "skipped", "quarantine", "done", "tmp"]

    /// Reads the spool at `spoolDir`.
    public static func read(spoolDir: String, nowSeconds: Int64) -> SpoolStatus {
        var s = SpoolStatus()
        for state in states {
            if state == "new" {
                var n = 0
                for bucket in (listDirectory(spoolDir + "/new") ?? []).sorted() {
                    n += (listDirectory(spoolDir + "/new/" + bucket) ?? []).count
                }
                s.counts[state] = n
            } else {
                let names = listDirectory(spoolDir + "/" + state) ?? []
                s.counts[state] = names.count
                if state == "defer" {
                    let log = AttemptLog(spoolDir: spoolDir)
                    for id in names {
                        if (log.entries(id).last?.nextAt ?? 0) <= nowSeconds { s.deferredDue += 1 }
                    }
                }
            }
        }
        if let oldestId = Spool(root: spoolDir).oldestWaitingId(), let micros = Spool.receivedMicros(ofId: oldestId) {
            s.oldestWaitingSeconds = max(0, nowSeconds - micros / 1_000_000)
        }
        s.lastRun = WorkerFiles(spoolDir: spoolDir).read("last-run")
        s.failuresLast24h = WorkerFiles(spoolDir: spoolDir).failures(since: nowSeconds - 86400)
        return s
    }

    /// The figures as a JSON object.
    public var json: [String: Any] {
        var d: [String: Any] = ["counts": counts, "deferred_due": deferredDue, "failures_last_24h": failuresLast24h]
        d["oldest_waiting_seconds"] = oldestWaitingSeconds.map { NSNumber(value: $0) } ?? NSNull()
        d["last_run"] = lastRun ?? NSNull()
        return d
    }
}

/// One dead-lettered event with why.
public struct FailedEvent: Sendable {
    /// Its id.
    public var id: String
    /// Its event type.
    public var event: String
    /// Its attempts.
    public var attempts: [AttemptEntry]

    /// Reads failed/ (oldest first).
    public static func list(spoolDir: String) -> [FailedEvent] {
        let log = AttemptLog(spoolDir: spoolDir)
        return (listDirectory(spoolDir + "/failed") ?? []).sorted().map { id in
            let bytes = (try? readWholeFile(spoolDir + "/failed/" + id, limit: 80 << 20)) ?? []
            let event = (try? SpoolRecord.decode(bytes))?.event ?? "?"
            return FailedEvent(id: id, event: event, attempts: log.entries(id))
        }
    }

    /// The figures as a JSON object.
    public var json: [String: Any] {
        [
            "id": id, "event": event, "attempts": attempts.count,
            "last_reason": attempts.last?.reason ?? "", "last_detail": attempts.last?.detail ?? "",
            "last_at": attempts.last.map { NSNumber(value: $0.at) } ?? NSNull(),
            "log": attempts.map { $0.json },
        ]
    }
}

/// The operator's commands.
public enum Admin {
    /// Why a retry did not happen for an id.
    public enum RetryError: Error, Equatable, CustomStringConvertible {
        /// No such event in failed/ or skipped/.
        case notFound(String)
        /// The move failed.
        case system(String)

        public var description: String {
            switch self {
            case .notFound(let id): return "\(id): not in failed/ or skipped/"
            case .system(let s): return s
            }
        }
    }

    /// Moves dead-lettered (or skipped) events back to waiting, due at once, with
    /// a fresh attempt count. Must run under the drain run lock.
    public static func retry(spoolDir: String, ids: [String], nowSeconds: Int64) -> (moved: [String], errors: [RetryError]) {
        var moved: [String] = []
        var errors: [RetryError] = []
        let log = AttemptLog(spoolDir: spoolDir)
        for id in ids {
            guard !id.isEmpty, !id.contains("/"), !id.hasPrefix(".") else {
                errors.append(.notFound(id))
                continue
            }
            let from = ["failed", "skipped"].first { FileManager.default.fileExists(atPath: spoolDir + "/\($0)/" + id) }
            guard let from else {
                errors.append(.notFound(id))
                continue
            }
            // Keep the history for the operator, but start the count again.
            let history = spoolDir + "/attempts/" + id
            if FileManager.default.fileExists(atPath: history) {
                rename(history, history + ".retried-\(nowSeconds)")
                log.remove(id)
            }
            if rename(spoolDir + "/\(from)/" + id, spoolDir + "/defer/" + id) == 0 {
                moved.append(id)
            } else {
                errors.append(.system("\(id): \(String(cString: strerror(errno)))"))
            }
        }
        return (moved, errors)
    }

    /// Prunes the whole lock store and the other housekeeping; returns counts by kind.
    public static func prune(config: WorkerConfig, nowSeconds: Int64) -> [String: Int] {
        let store = LockStore(root: config.spoolDir + "/dedupe")
        var markers = MarkerPruneCount()
        for top in LockStore.topShards {
            markers += store.prune(top: top, nowSeconds: nowSeconds, staleSeconds: config.retentionSeconds)
        }
        for name in listDirectory(config.spoolDir + "/attempts") ?? [] where name.contains(".retried-") {
            let p = config.spoolDir + "/attempts/" + name
            if let m = modificationTime(p), nowSeconds - m > config.retentionSeconds { unlink(p) }
        }
        let other = Housekeeping(config: config, nowSeconds: nowSeconds).run()
        return [
            "markers_examined": markers.examined, "markers_removed": markers.removed, "markers_busy": markers.busy,
            "tmp_removed": other.tmp, "done_removed": other.done, "skipped_removed": other.skipped,
        ]
    }
}

/// Prometheus text format for node_exporter's textfile collector.
public enum Metrics {
    /// The metrics for `status` and `counters`.
    public static func render(status: SpoolStatus, counters: Counters) -> String {
        var out = ""
        out += "# HELP installer_webhooks_events_total Events by drain outcome, over all runs.\n"
        out += "# TYPE installer_webhooks_events_total counter\n"
        for (name, _) in DrainReport().fields {
            out += "installer_webhooks_events_total{outcome=\"\(name)\"} \(counters.values[name] ?? 0)\n"
        }
        out += "# HELP installer_webhooks_drain_runs_total Drain runs completed.\n"
        out += "# TYPE installer_webhooks_drain_runs_total counter\n"
        out += "installer_webhooks_drain_runs_total \(counters.values["runs"] ?? 0)\n"
        out += "# HELP installer_webhooks_spool_events Events in each spool state.\n"
        out += "# TYPE installer_webhooks_spool_events gauge\n"
        for state in SpoolStatus.states {
            out += "installer_webhooks_spool_events{state=\"\(state)\"} \(status.counts[state] ?? 0)\n"
        }
        out += "# HELP installer_webhooks_oldest_waiting_seconds Age of the oldest event not yet handled (0 when none).\n"
        out += "# TYPE installer_webhooks_oldest_waiting_seconds gauge\n"
        out += "installer_webhooks_oldest_waiting_seconds \(status.oldestWaitingSeconds ?? 0)\n"
        out += "# HELP installer_webhooks_failures_24h Failed handler attempts in the last 24 hours.\n"
        out += "# TYPE installer_webhooks_failures_24h gauge\n"
        out += "installer_webhooks_failures_24h \(status.failuresLast24h)\n"
        if let finished = (status.lastRun?["finished_at"] as? NSNumber)?.int64Value {
            out += "# HELP installer_webhooks_last_drain_timestamp_seconds When the last drain finished.\n"
            out += "# TYPE installer_webhooks_last_drain_timestamp_seconds gauge\n"
            out += "installer_webhooks_last_drain_timestamp_seconds \(finished)\n"
        }
        return out
    }
}
