import Foundation
import Testing
import WebhookCore
import WebhookTestSupport

@Suite struct TimestampTests {
    @Test func parsesRFC3339() {
        #expect(Timestamp.parseSeconds("1970-01-01T00:00:00Z") == 0)
        #expect(Timestamp.parseSeconds("2025-01-15T10:30:00Z") == 1_736_937_000)
        #expect(Timestamp.parseSeconds("2025-01-15T10:30:00.123456Z") == 1_736_937_000)
        #expect(Timestamp.parseSeconds("2025-01-15T12:30:00+02:00") == 1_736_937_000)
        #expect(Timestamp.parseSeconds("2025-01-15T05:30:00-05:00") == 1_736_937_000)
        #expect(Timestamp.parseSeconds("2024-02-29T00:00:00Z") == 1_709_164_800)
    }

    @Test(arguments: ["", "2025-01-15", "2025-01-15T10:30:00", "2025-13-15T10:30:00Z", "2025-01-15T25:30:00Z",
        "2025-01-15T10:30:00.Z", "2025-01-15T10:30:00+0200", "x025-01-15T10:30:00Z", "2025-01-15T10:30:00Zjunk"])
    func rejectsOthers(_ text: String) {
        #expect(Timestamp.parseSeconds(text) == nil)
    }

    @Test func formatsAndRoundTrips() {
        #expect(Timestamp.format(micros: 0) == "1970-01-01T00:00:00.000000Z")
        #expect(Timestamp.format(micros: 1_736_937_000_123_456) == "2025-01-15T10:30:00.123456Z")
        #expect(Timestamp.bucketName(micros: 1_736_937_000_123_456) == "20250115T1030")
        for s: Int64 in [0, 951_782_400, 1_709_164_800, 4_102_444_800] {
            #expect(Timestamp.parseSeconds(Timestamp.format(micros: s * 1_000_000)) == s)
        }
    }
}

@Suite struct ConfigTests {
    let base = ["WEBHOOK_SECRET_FILE": "/s", "WEBHOOK_SPOOL_DIR": "/q"]

    @Test func defaults() throws {
        let (c, warnings) = try ReceiverConfig.load(environment: base, configFile: nil)
        #expect(c.maxBodyBytes == 1_048_576)
        #expect(c.retentionSeconds == 604_800)
        #expect(c.ackDeadlineMilliseconds == 3000)
        #expect(c.durability == .group)
        #expect(c.dedupeFields.isEmpty)
        #expect(warnings.isEmpty)
    }

    @Test func requiredSettingsAreNamedWhenMissing() {
        #expect(throws: ConfigError("WEBHOOK_SECRET_FILE is not set (environment or --config FILE)")) {
            try ReceiverConfig.load(environment: ["WEBHOOK_SPOOL_DIR": "/q"], configFile: nil)
        }
        #expect(throws: ConfigError("WEBHOOK_SPOOL_DIR is not set (environment or --config FILE)")) {
            try ReceiverConfig.load(environment: ["WEBHOOK_SECRET_FILE": "/s"], configFile: nil)
        }
    }

    @Test func fileWinsOverEnvironmentAndParsesLikeSystemd() throws {
        let dir = TempDirectory("config")
        defer { dir.remove() }
        writeFile(dir.at("env"), """
            # comment
            WEBHOOK_SPOOL_DIR="/from/file"
            export WEBHOOK_MAX_BODY_BYTES=512K
            WEBHOOK_DEDUPE_RETENTION='10d'
            WEBHOOK_DEDUPE_FIELDS = event, data.id ,timestamp

            WEBHOOK_ACK_DEADLINE=2500ms
            WEBHOOK_TYPO=1
            """)
        let (c, warnings) = try ReceiverConfig.load(environment: base, configFile: dir.at("env"))
        #expect(c.spoolDir == "/from/file")
        #expect(c.secretFile == "/s")
        #expect(c.maxBodyBytes == 524_288)
        #expect(c.retentionSeconds == 864_000)
        #expect(c.dedupeFields == ["event", "data.id", "timestamp"])
        #expect(c.ackDeadlineMilliseconds == 2500)
        #expect(warnings == ["unknown setting WEBHOOK_TYPO ignored"])
    }

    @Test(arguments: [
        ("WEBHOOK_MAX_BODY_BYTES", "lots"), ("WEBHOOK_MAX_BODY_BYTES", "0"), ("WEBHOOK_DEDUPE_RETENTION", "1h"),
        ("WEBHOOK_ACK_DEADLINE", "5s"), ("WEBHOOK_ACK_DEADLINE", "10ms"), ("WEBHOOK_THREADS", "0"),
        ("WEBHOOK_DURABILITY", "sometimes"), ("WEBHOOK_DURABILITY", "off"), ("WEBHOOK_DEDUPE_FIELDS", "data..id"),
    ])
    func badValuesAreRefused(_ kv: (String, String)) {
        var env = base
        env[kv.0] = kv.1
        #expect(throws: ConfigError.self) { try ReceiverConfig.load(environment: env, configFile: nil) }
    }

    @Test func unsafeDurabilityNeedsTheExplicitFlag() throws {
        var env = base
        env["WEBHOOK_DURABILITY"] = "off"
        env["WEBHOOK_UNSAFE"] = "1"
        #expect(try ReceiverConfig.load(environment: env, configFile: nil).0.durability == .off)
    }

    @Test func secretsFile() throws {
        let dir = TempDirectory("secrets")
        defer { dir.remove() }
        writeFile(dir.at("s"), "  first \r\n\nsecond\n")
        #expect(try ReceiverConfig.loadSecrets(from: dir.at("s")) == [Array("first".utf8), Array("second".utf8)])
        writeFile(dir.at("empty"), "\n \n")
        #expect(throws: ConfigError.self) { try ReceiverConfig.loadSecrets(from: dir.at("empty")) }
        #expect(throws: ConfigError.self) { try ReceiverConfig.loadSecrets(from: dir.at("absent")) }
    }

    @Test func durations() {
        #expect(DurationText.parseMilliseconds("5s") == 5000)
        #expect(DurationText.parseMilliseconds("500ms") == 500)
        #expect(DurationText.parseMilliseconds("2m") == 120_000)
        #expect(DurationText.parseMilliseconds("1.5") == 1500)
        #expect(DurationText.parseMilliseconds("7d") == 604_800_000)
        #expect(DurationText.parseMilliseconds("-1s") == nil)
        #expect(DurationText.parseMilliseconds("soon") == nil)
    }
}
