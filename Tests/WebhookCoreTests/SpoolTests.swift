import Foundation
import Glibc
import Testing
import WebhookCore
import WebhookTestSupport

func sampleRecord(id: String = Spool.newId(receivedAtMicros: 1_796_000_000_000_000), body: String = "{\"event\":\"order.created\"}\n")
    -> SpoolRecord
{
    SpoolRecord(
        id: id, key: String(repeating: "0f", count: 32), event: "order.created", receivedAtMicros: 1_796_000_000_000_000,
        remoteAddr: "127.0.0.1", requestId: "r1", organizationId: "org", entityId: "ent\nwith newline%",
        timestamp: "2026-12-01T00:00:00Z", headers: [("x-webhook-signature", "sha256=00")], body: Array(body.utf8))
}

@Suite struct SpoolTests {
    @Test func createTreeMakesPrivateDirectories() throws {
        let dir = TempDirectory("spool")
        defer { dir.remove() }
        let spool = Spool(root: dir.at("s"))
        try spool.createTree()
        try spool.createTree()
        for d in Spool.directories { #expect(modeBits(dir.at("s/" + d)) == 0o700, "\(d)") }
    }

    @Test func commitPublishesAWholeRecordAndLeavesTmpEmpty() throws {
        let dir = TempDirectory("spool")
        defer { dir.remove() }
        let spool = Spool(root: dir.path)
        try spool.createTree()
        let record = sampleRecord()
        let waiting = Spool.waitingPath(id: record.id, receivedAtMicros: record.receivedAtMicros)
        let staged = try spool.stage(record)
        try spool.publish(staged: staged, as: waiting)
        #expect(filesUnder(dir.at("tmp")).isEmpty)
        #expect(filesUnder(dir.at("new")) == [String(waiting.dropFirst(4))])
        #expect(modeBits(dir.at(waiting)) == 0o600)
        let back = try SpoolRecord.decode(Array(try Data(contentsOf: URL(fileURLWithPath: dir.at(waiting)))))
        #expect(back == record)
        #expect(spool.exists(waiting))
    }

    @Test func decodeRejectsDamage() throws {
        let bytes = sampleRecord().encodedHeader() + Array("{\"event\":\"order.created\"}\n".utf8)
        #expect(try SpoolRecord.decode(bytes).event == "order.created")
        #expect(throws: SpoolRecord.DecodeError.self) { try SpoolRecord.decode(Array(bytes.dropLast())) }
        #expect(throws: SpoolRecord.DecodeError.self) { try SpoolRecord.decode(Array(bytes.dropFirst())) }
        #expect(throws: SpoolRecord.DecodeError.self) { try SpoolRecord.decode([]) }
    }

    @Test func idsSortByArrivalAndDoNotCollide() {
        let a = Spool.newId(receivedAtMicros: 999)
        let b = Spool.newId(receivedAtMicros: 1000)
        #expect(a < b)
        #expect(a.count == 27)
        #expect(Set((0..<1000).map { _ in Spool.newId(receivedAtMicros: 5) }).count == 1000)
    }

    /// Every call of the commit protocol, failed in turn: an error comes back and
    /// nothing of the attempt is left in tmp/ or new/.
    @Test(arguments: [
        (FileCall.open, 1), (.open, 2), (.open, 3), (.close, 2), (.close, 3), (.write, 1), (.write, 2), (.fsync, 1), (.fsync, 2), (.fsync, 3), (.close, 1), (.link, 1),
        (.mkdir, 1),
    ])
    func everyFailedCallLeavesNothingBehind(_ fault: (FileCall, Int)) throws {
        let dir = TempDirectory("spool")
        defer { dir.remove() }
        try Spool(root: dir.path).createTree()
        let plan = FaultPlan(failing: fault.0, nth: fault.1, code: ENOSPC)
        let spool = Spool(root: dir.path, fs: plan.fileOps)
        let record = sampleRecord()
        let waiting = Spool.waitingPath(id: record.id, receivedAtMicros: record.receivedAtMicros)
        #expect(throws: SystemError.self) {
            let staged = try spool.stage(record)
            try spool.publish(staged: staged, as: waiting)
        }
        #expect(plan.didFire, "the fault was never reached")
        #expect(filesUnder(dir.at("tmp")).isEmpty)
        #expect(filesUnder(dir.at("new")).isEmpty)
    }
}

@Suite struct FileSystemCheckTests {
    @Test func aLocalFileSystemIsNotWarnedAbout() {
        let dir = TempDirectory("fs")
        defer { dir.remove() }
        #expect(Spool(root: dir.path).fileSystemWarning() == nil)
        #expect(Spool(root: "/dev/shm").fileSystemWarning() == nil)
    }
}
