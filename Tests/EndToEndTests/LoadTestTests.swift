// webhook-loadtest against servers that misbehave on purpose, and against the
// real stack with the spool checked afterwards.
import Foundation
import Glibc
import Testing
import WebhookClient
import WebhookCore
import WebhookTestSupport

func loadtest(_ arguments: [String]) throws -> (status: Int32, out: String) {
    let r = try run(Paths.binary("webhook-loadtest"), arguments, environment: [:])
    return (r.status, String(decoding: r.stdout, as: UTF8.self) + String(decoding: r.stderr, as: UTF8.self))
}

@Suite struct LoadTestTests {
    @Test func openLoopLatencyShowsAServerStall() throws {
        let server = try TinyHTTPServer(status: 200)
        defer { server.stop() }
        server.stall(afterRequests: 80, milliseconds: 2000)
        var o = LoadOptions(url: HTTPURL(server.url())!, secrets: [Array("s".utf8)])
        o.rate = 100
        o.connections = 4
        o.durationMilliseconds = 4000
        let r = LoadGenerator.run(o)
        // About half the requests were scheduled inside the stall and waited for it.
        #expect(r.histogram.max >= 1_800_000, "max \(r.histogram.max) µs")
        #expect(r.histogram.value(atQuantile: 0.7) >= 400_000, "p70 \(r.histogram.value(atQuantile: 0.7)) µs")
        #expect(r.sent >= 390)
        #expect(r.allWithinBudget)
    }

    @Test func closedLoopWouldHideTheSameStall() throws {
        let server = try TinyHTTPServer(status: 200)
        defer { server.stop() }
        server.stall(afterRequests: 80, milliseconds: 2000)
        var o = LoadOptions(url: HTTPURL(server.url())!, secrets: [Array("s".utf8)])
        o.connections = 4
        o.durationMilliseconds = 4000
        let r = LoadGenerator.run(o)
        // The same stall, but only the few requests in flight at the time record it.
        #expect(r.histogram.max >= 1_800_000)
        #expect(r.histogram.value(atQuantile: 0.7) < 400_000)
    }

    @Test func verdictAndExitStatusFollowTheAnswers() throws {
        let dir = TempDirectory("lt")
        defer { dir.remove() }
        writeFile(dir.at("secret"), "s\n")
        let server = try TinyHTTPServer(status: 200)
        defer { server.stop() }
        // A budget generous enough for a busy machine, and a delay well past it.
        let common = ["run", "--url", server.url(), "--secret-file", dir.at("secret"), "--rate", "10", "--duration", "1s",
            "--connections", "2", "--budget", "1s"]
        let ok = try loadtest(common + ["--json", dir.at("ok.json"), "--plot", dir.at("ok.svg")])
        #expect(ok.status == 0, "\(ok.out)")
        #expect(ok.out.contains("PASS: all 10 requests answered 2xx within the 1 s budget"))
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir.at("ok.json")))) as? [String: Any]
        #expect(json?["pass"] as? Bool == true)
        #expect((json?["histogram_us"] as? [[Int]])?.reduce(0) { $0 + $1[2] } == 10)
        let svg = try String(contentsOfFile: dir.at("ok.svg"), encoding: .utf8)
        #expect(svg.hasPrefix("<svg") && svg.hasSuffix("</svg>\n") && svg.contains("<polyline"))

        server.answer(500)
        let failing = try loadtest(common)
        #expect(failing.status == 1)
        #expect(failing.out.contains("FAIL: 10 non-2xx answers"))

        server.answer(200)
        server.delay(milliseconds: 1200)
        let slow = try loadtest(common)
        #expect(slow.status == 1)
        #expect(slow.out.contains("answered after the 1 s budget"))

        let usage = try loadtest(["run", "--url", server.url(), "--secret-file", dir.at("secret"), "--rate", "fast"])
        #expect(usage.status == 2)
    }

    @Test func verifySpoolFindsLostDoubledAndForeignEvents() throws {
        let stack = try ReceiverStack()
        defer { stack.stop() }
        var o = LoadOptions(url: HTTPURL(stack.url)!, secrets: stack.secrets.map { Array($0.utf8) })
        o.rate = 100
        o.connections = 4
        o.durationMilliseconds = 1000
        o.duplicates = 0.2
        let r = LoadGenerator.run(o)
        #expect(r.allWithinBudget, "\(LoadReport.text(r, options: o))")
        #expect(r.duplicatesSent > 0)
        #expect(r.duplicatesAnsweredDuplicate == r.duplicatesSent)
        let clean = SpoolVerification.check(spoolDir: stack.spoolDir, accepted: r.acceptedEvents, sent: r.sentEvents)
        #expect(clean.clean, "\(clean)")
        #expect(clean.found == r.acceptedEvents.count)

        let files = stack.waitingFiles
        try #require(files.count >= 3)
        let new = stack.spoolDir + "/new/"
        unlink(new + files[0])
        let copy = files[1].split(separator: "/").dropLast().joined(separator: "/") + "/9999999999999999-copy000000"
        link(new + files[1], new + copy)
        let stranger = SpoolRecord(
            id: "9999999999999999-stranger00", key: String(repeating: "e", count: 64), event: "order.created",
            receivedAtMicros: 1, remoteAddr: "", requestId: "", organizationId: nil, entityId: nil, timestamp: nil,
            headers: [], body: Array("{\"event\":\"order.created\",\"not\":\"sent\"}".utf8))
        try Data(stranger.encodedHeader() + stranger.body).write(to: URL(fileURLWithPath: stack.spoolDir + "/failed/" + stranger.id))
        let damaged = SpoolVerification.check(spoolDir: stack.spoolDir, accepted: r.acceptedEvents, sent: r.sentEvents)
        #expect(damaged.lost == 1)
        #expect(damaged.doubled == 1)
        #expect(damaged.foreign == 1)
        #expect(!damaged.clean)
    }

    @Test func retryScheduleReportsTheAttemptThatSucceeded() throws {
        let dir = TempDirectory("lt")
        defer { dir.remove() }
        writeFile(dir.at("secret"), "s\n")
        let server = try TinyHTTPServer(status: 503)
        defer { server.stop() }
        // 1 m, 5 m, 30 m… scaled down to 6 ms, 30 ms, 180 ms: the endpoint recovers in between.
        let recover = Thread {
            _ = waitUntil { server.requests.count >= 3 }
            server.answer(200)
        }
        recover.start()
        let r = try loadtest(["send", "--url", server.url(), "--secret-file", dir.at("secret"), "--retry-schedule", "--time-scale", "0.0001"])
        #expect(r.status == 0, "\(r.out)")
        let attempts = server.requests.count
        #expect(attempts >= 3)
        #expect(r.out.contains("delivered on attempt \(attempts) of 6"))
        // Every attempt is the same delivery, byte for byte.
        #expect(Set(server.requests.map(\.body)).count == 1)
        #expect(Set(server.requests.compactMap { $0.headers["x-webhook-signature"] }).count == 1)
    }
}

@Suite struct EventSampleTests {
    @Test(arguments: EventSamples.types)
    func everySampleIsTheSendersShape(type: String) throws {
        let micros: Int64 = 1_796_400_000_000_000  // 2026-12-04T16:00:00Z
        let body = EventSamples.payload(type: type, organizationId: "org-1", entityId: "ent-1", sequence: 7, nowMicros: micros)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])
        #expect(object["event"] as? String == type)
        #expect(object["timestamp"] as? String == "2026-12-04T16:00:00Z")
        #expect(object["organizationId"] as? String == "org-1")
        let data = try #require(object["data"] as? [String: Any])
        #expect(data["id"] as? String == "ent-1")
        #expect(data["createdAt"] as? String == "2026-12-04T16:00:00Z")
        if type.hasPrefix("booking.") {
            #expect(data["start"] as? String == "2026-12-05T16:00:00Z")
            #expect(data["end"] as? String == "2026-12-05T20:00:00Z")
            #expect((data["orderId"] as? String)?.count == 36)
        } else if type.hasPrefix("workflow.") {
            #expect(data["position"] as? Int == 8)
        } else {
            #expect(data["displayId"] as? String == "P1-7")
            #expect(data["customerName"] as? String == "Åse Ødegård")
        }
        // The receiver's own parser reads the fields it acts on.
        let payload = try PayloadParser.parse(body)
        #expect(payload.event == type)
        #expect(payload.organizationId == "org-1" && payload.entityId == "ent-1")
    }

    @Test func generatedIdsAreVersion4AndNeverRepeat() {
        var factory = EventFactory()
        var seen = Set<String>()
        for i in 0..<20_000 {
            let body = factory.payload(type: "booking.created", sequence: i)
            let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:]
            let org = object["organizationId"] as? String ?? ""
            let data = object["data"] as? [String: Any] ?? [:]
            for id in [org, data["id"] as? String ?? "", data["orderId"] as? String ?? ""] {
                let chars = Array(id.utf8)
                #expect(chars.count == 36 && chars[14] == UInt8(ascii: "4") && "89ab".utf8.contains(chars[19]), "\(id)")
                #expect(seen.insert(id).inserted, "\(id) repeated")
            }
        }
        #expect(seen.count == 60_000)
    }
}
