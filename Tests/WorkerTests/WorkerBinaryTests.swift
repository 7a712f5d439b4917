// webhook-worker as the operator runs it: overlapping cron runs, a drain
// killed with SIGKILL mid-handler, and the admin commands' output.
import Foundation
import Glibc
import Testing
import WebhookClient
import WebhookCore
import WebhookTestSupport
import WorkerCore

extension WorkerHarness {
    var environment: [String: String] { ["WEBHOOK_SPOOL_DIR": spoolDir, "PATH": "/usr/bin:/bin"] }

    /// Starts `webhook-worker drain` in the background.
    func startDrain(_ arguments: [String], log: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Paths.binary("webhook-worker"))
        p.arguments = ["drain"] + arguments
        p.environment = environment
        _ = FileManager.default.createFile(atPath: dir.at(log), contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: dir.at(log)))
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        return p
    }

    func worker(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        let r = try run(Paths.binary("webhook-worker"), arguments, environment: environment)
        return (r.status, String(decoding: r.stdout, as: UTF8.self), String(decoding: r.stderr, as: UTF8.self))
    }
}

@Suite(.serialized) struct WorkerBinaryTests {
    @Test func aSecondOverlappingDrainExitsAtOnce() throws {
        let h = WorkerHarness()
        let id = h.receive(EventSamples.payload(type: "order.created", nowMicros: h.start * 1_000_000))
        let started = h.dir.at("started")
        let release = h.dir.at("release")
        // The handler holds the first drain until the test lets it go.
        let handler = h.script("slow", "echo \"$WEBHOOK_ID\" >> \(started); while [ ! -e \(release) ]; do sleep 0.02; done")
        let first = try h.startDrain(["--exec", handler], log: "first.log")
        #expect(waitUntil { !h.lines("started").isEmpty }, "the first drain never started its handler")
        let second = try h.worker(["drain", "--exec", handler])
        #expect(second.status == 0)
        #expect(second.out.contains("another drain is running"))
        writeFile(release, "")
        first.waitUntilExit()
        #expect(first.terminationStatus == 0)
        #expect(h.lines("started") == [id])
        #expect(h.files("new").isEmpty && h.files("cur").isEmpty)
    }

    @Test func aDrainKilledMidHandlerIsResumedForThatEventOnlyAndOnce() throws {
        let h = WorkerHarness()
        let ids = (0..<3).map { i in
            h.receive(EventSamples.payload(type: "order.updated", nowMicros: (h.start + Int64(i)) * 1_000_000), at: Int64(i))
        }
        let log = h.dir.at("runs")
        let pidFile = h.dir.at("handler.pid")
        // First run: the second event's handler hangs; the drain is killed with SIGKILL there.
        let hang = h.script("hang", """
            echo "$WEBHOOK_ID $WEBHOOK_ATTEMPT" >> \(log)
            if [ "$WEBHOOK_ID" = "\(ids[1])" ]; then echo $$ > \(pidFile); exec sleep 600; fi
            """)
        let first = try h.startDrain(["--exec", hang, "--concurrency", "1"], log: "first.log")
        #expect(waitUntil(seconds: 20) { FileManager.default.fileExists(atPath: pidFile) && !h.lines("handler.pid").isEmpty })
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        let handlerPid = try #require(Int32(h.lines("handler.pid").first ?? ""))
        // Its handler dies with it: nothing finishes the event behind the next run's back.
        #expect(waitUntil { kill(handlerPid, 0) != 0 }, "handler \(handlerPid) outlived the drain")
        #expect(h.files("cur").count == 1)

        let ok = h.script("ok", "echo \"$WEBHOOK_ID $WEBHOOK_ATTEMPT\" >> \(log)")
        let second = try h.worker(["drain", "--exec", ok, "--concurrency", "1"])
        #expect(second.status == 0, "\(second.err)")
        let runs = h.lines("runs")
        #expect(runs == ["\(ids[0]) 1", "\(ids[1]) 1", "\(ids[1]) 2", "\(ids[2]) 1"])
        #expect(h.files("new").isEmpty && h.files("cur").isEmpty && h.files("defer").isEmpty)
        #expect(second.err.contains("claim of a stopped run taken back"))
    }

    @Test func statusJSONCountsMatchTheTree() throws {
        let h = WorkerHarness { $0.attempts = 1 }
        for i in 0..<5 { h.receive(EventSamples.payload(type: "booking.created", nowMicros: (h.start + Int64(i)) * 1_000_000), at: Int64(i)) }
        let failing = h.receive(EventSamples.payload(type: "order.deleted", nowMicros: (h.start + 10) * 1_000_000), at: 10)
        h.config.routes = [Route(pattern: "order.*", action: .exec("exit 3"))]
        h.drain(at: 20)
        let r = try h.worker(["status", "--json"])
        #expect(r.status == 0)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any])
        let counts = try #require(json["counts"] as? [String: Int])
        for state in SpoolStatus.states {
            #expect(counts[state] == h.files(state).count, "\(state)")
        }
        #expect(counts["skipped"] == 5)
        #expect(counts["failed"] == 1)
        #expect(json["failures_last_24h"] as? Int == 1)
        let failed = try h.worker(["failed"])
        #expect(failed.out.contains("\(failing)  order.deleted  1 attempts, last: exit 3"))
        let human = try h.worker(["status"])
        #expect(human.out.contains("dead (failed)     1"))
        let retried = try h.worker(["retry", "--all", "--json"])
        #expect(retried.status == 0)
        #expect(h.files("failed").isEmpty)
        #expect(h.files("defer") == [failing])
    }

    @Test func usageErrorsAndHelp() throws {
        let h = WorkerHarness()
        #expect(try h.worker(["--help"]).out.contains("webhook-worker drain [--config FILE]"))
        #expect(try h.worker(["drain"]).status == 64)
        #expect(try h.worker(["retry"]).status == 64)
        #expect(try h.worker(["frobnicate"]).status == 64)
        let unset = try run(Paths.binary("webhook-worker"), ["status"], environment: [:])
        #expect(unset.status == 78)
        #expect(try h.worker(["retry", "nope"]).status == 1)
    }
}

@Suite(.serialized) struct WorkerCrashTests {
    @Test func drainsKilledAtRandomLoseNothingAndRerunOnlyWhatWasInterrupted() throws {
        let h = WorkerHarness()
        let ids = (0..<60).map { i in
            h.receive(EventSamples.payload(type: "order.updated", nowMicros: (h.start + Int64(i)) * 1_000_000), at: Int64(i))
        }
        let log = h.dir.at("log")
        let handler = h.script("handler", """
            echo "$WEBHOOK_ID start" >> \(log)
            sleep 0.0$(($$ % 5))
            echo "$WEBHOOK_ID done" >> \(log)
            """)
        var kills = 0
        for _ in 0..<15 {
            let before = h.lines("log").count
            let drain = try h.startDrain(["--exec", handler, "--concurrency", "4"], log: "drain.log")
            _ = waitUntil(seconds: 10) { h.lines("log").count > before || !drain.isRunning }
            usleep(UInt32.random(in: 0..<40_000))
            if drain.isRunning {
                kill(drain.processIdentifier, SIGKILL)
                kills += 1
            }
            drain.waitUntilExit()
        }
        let last = try h.worker(["drain", "--exec", handler, "--concurrency", "4"])
        #expect(last.status == 0)
        #expect(kills > 0)
        #expect(h.files("new").isEmpty && h.files("cur").isEmpty && h.files("defer").isEmpty && h.files("failed").isEmpty)
        let done = h.lines("log").filter { $0.hasSuffix(" done") }.map { String($0.dropLast(5)) }
        // Every event was handled; only events whose drain died around them ran twice.
        #expect(Set(done) == Set(ids))
        let reruns = done.count - Set(done).count
        #expect(reruns <= kills * 4, "\(reruns) re-runs for \(kills) kills")
        // No handler of a killed drain is still running.
        let ps = try run("/bin/ps", ["-eo", "args"])
        #expect(!String(decoding: ps.stdout, as: UTF8.self).contains(handler))
    }
}
