import Foundation
import Testing
import WebhookCore
import WebhookTestSupport

func fixtureEvents() throws -> [(String, [UInt8])] {
    guard let dir = Bundle.module.url(forResource: "Fixtures/events", withExtension: nil) else {
        throw CocoaError(.fileNoSuchFile)
    }
    return try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted().map {
        (String($0.dropLast(5)), Array(try Data(contentsOf: dir.appendingPathComponent($0))))
    }
}

func parse(_ text: String, extra: [String] = []) throws(PayloadError) -> Payload {
    try PayloadParser.parse(Array(text.utf8), extraPaths: extra)
}

@Suite struct PayloadTests {
    @Test func everyFixtureEventParses() throws {
        let events = try fixtureEvents()
        #expect(events.count == 12)
        for (name, body) in events {
            let p = try PayloadParser.parse(body)
            #expect(p.event == name)
            #expect(p.timestamp == "2025-01-15T10:30:00Z")
            #expect(p.organizationId == "6a2f3c1e-8d4b-4f7a-9c2e-1b5d7e9f0a13")
            #expect(p.entityId != nil)
        }
    }

    @Test func rejectsWhatIsNotAnEventObject() {
        #expect(throws: PayloadError.notAnObject) { try parse("[1,2]") }
        #expect(throws: PayloadError.notAnObject) { try parse("\"event\"") }
        #expect(throws: PayloadError.missingEvent) { try parse("{}") }
        #expect(throws: PayloadError.missingEvent) { try parse("{\"event\":42}") }
        #expect(throws: PayloadError.missingEvent) { try parse("{\"event\":\"\"}") }
        #expect(throws: PayloadError.missingEvent) { try parse("{\"event\":{\"name\":\"order.created\"}}") }
        #expect(throws: PayloadError.missingEvent) { try parse("{\"data\":{\"event\":\"order.created\"}}") }
    }

    @Test(arguments: [
        "", "{", "{\"event\":\"a\"", "{\"event\":\"a\",}", "{\"event\" \"a\"}", "{\"event\":\"a\"} x",
        "{\"event\":\"a\",\"n\":01}", "{\"event\":\"a\",\"n\":1.}", "{\"event\":\"a\",\"n\":-}", "{\"event\":\"a\",\"t\":tru}",
        "{\"event\":\"a\\x\"}", "{\"event\":\"a\u{01}\"}", "{\"event\":\"a\",\"u\":\"\\u12\"}", "{'event':'a'}",
        "{\"event\":\"a\",\"l\":[1,2,]}", "{\"event\":\"a\"}}",
    ])
    func rejectsInvalidJSON(_ text: String) {
        #expect(throws: (any Error).self) { try parse(text) }
        do {
            _ = try parse(text)
        } catch {
            if case .invalidJSON = error {} else { Issue.record("\(text): \(error), expected invalidJSON") }
        }
    }

    @Test func rejectsInvalidUTF8() {
        for bad: [UInt8] in [[0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF5, 0x80, 0x80, 0x80], [0xE2, 0x82], [0xFF]] {
            let body = Array("{\"event\":\"a\",\"s\":\"".utf8) + bad + Array("\"}".utf8)
            #expect(throws: (any Error).self) { try PayloadParser.parse(body) }
        }
        let good = Array("{\"event\":\"a\",\"s\":\"Åse Ødegård €𝄞\"}".utf8)
        #expect((try? PayloadParser.parse(good))?.event == "a")
    }

    @Test func deepNestingIsRefusedWithoutRecursion() {
        let deep = "{\"event\":\"a\",\"x\":" + String(repeating: "[", count: 200_000) + String(repeating: "]", count: 200_000) + "}"
        #expect(throws: PayloadError.tooDeep) { try parse(deep) }
        let fine = "{\"event\":\"a\",\"x\":" + String(repeating: "[", count: 500) + String(repeating: "]", count: 500) + "}"
        #expect((try? parse(fine))?.event == "a")
    }

    @Test func duplicateWatchedKeysAreRefused() {
        #expect(throws: PayloadError.duplicateKey("event")) { try parse("{\"event\":\"a\",\"event\":\"b\"}") }
        #expect(throws: PayloadError.duplicateKey("data")) { try parse("{\"event\":\"a\",\"data\":{\"id\":1},\"data\":{\"id\":2}}") }
        #expect(throws: PayloadError.duplicateKey("data.id")) { try parse("{\"event\":\"a\",\"data\":{\"id\":1,\"id\":2}}") }
        // Keys nobody acts on may repeat.
        #expect((try? parse("{\"event\":\"a\",\"x\":1,\"x\":2}"))?.event == "a")
    }

    @Test func escapesAndLiteralsDecode() throws {
        let p = try parse(#"{"event":"order.\u0063reated\n","data":{"id":12345678901234567890123},"organizationId":null}"#)
        #expect(p.event == "order.created\n")
        #expect(p.entityId == "12345678901234567890123")
        #expect(p.organizationId == "null")
        let s = try parse(#"{"event":"\ud834\udd1e \"q\" \\ \/"}"#)
        #expect(s.event == "𝄞 \"q\" \\ /")
    }

    @Test func numbersOutOfRangeAreStillJSON() throws {
        let p = try parse(#"{"event":"a","n":1e999999,"m":-0.0000e-99999}"#)
        #expect(p.event == "a")
    }

    @Test func extraPathsAreExtracted() throws {
        let p = try parse(#"{"event":"a","data":{"id":"x","meta":{"rev":7}},"list":[{"id":"no"}]}"#, extra: ["data.meta.rev", "list.id"])
        #expect(p.fields["data.meta.rev"] == .literal("7"))
        #expect(p.fields["list.id"] == nil)
    }

    @Test func whitespaceAroundTheObjectIsFine() throws {
        #expect(try parse(" \n\t{\"event\" : \"a\" } \r\n").event == "a")
    }
}

@Suite struct FuzzRegressionTests {
    /// Every kept fuzz input, replayed through the real pipeline: an answer from the table, no crash.
    @Test func keptInputsGetAnAnswerFromTheTable() throws {
        let dir = try #require(Bundle.module.url(forResource: "Fixtures/fuzz-regressions", withExtension: nil))
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        #expect(names.count >= 6)
        let h = Harness { $0.maxBodyBytes = 64 << 10 }
        let receiver = Receiver(config: h.config, secrets: [fuzzSecret], spool: Spool(root: h.dir.path), clock: .fixed(h.nowMicros))
        var statuses: Set<Int> = []
        for name in names {
            let input = Array(try Data(contentsOf: dir.appendingPathComponent(name)))
            let (request, body) = try #require(fuzzRequest(input), "\(name)")
            var source = BytesBody(body)
            let response = receiver.handle(request, body: &source)
            #expect(fuzzViolation(response) == nil, "\(name): \(fuzzViolation(response) ?? "")")
            statuses.insert(response.status)
        }
        #expect(statuses.isSuperset(of: [400, 401, 405]))
    }
}
