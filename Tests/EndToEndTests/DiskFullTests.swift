// A real full disk: the spool on a small tmpfs, through nginx and the real handler.
import Foundation
import Glibc
import Testing
import WebhookClient
import WebhookCore
import WebhookTestSupport

/// Whether this process may mount a tmpfs (root, and not forbidden by its container).
let canMountTmpfs = geteuid() == 0 && ReadOnlyDirectory.supported

extension ReceiverStack {
    /// Restarts the handler with its spool on a fresh tmpfs of `size`.
    func moveSpoolToTmpfs(size: String) throws {
        stopHandler()
        let r = try run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size),mode=0700", "tmpfs", spoolDir])
        guard r.status == 0 else { throw StackError(description: "mount: \(String(decoding: r.stderr, as: UTF8.self))") }
        try startHandler()
    }

    func unmountSpool() {
        stopHandler()
        _ = try? run("/bin/umount", [spoolDir])
    }

    /// A file taking all but `leave` bytes of the spool's free space.
    func fillSpool(leaving leave: Int) throws {
        let free = try #require(Spool(root: spoolDir).freeSpace()).bytes
        let size = max(0, free - leave)
        let fd = open(spoolDir + "/ballast", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        defer { close(fd) }
        let chunk = [UInt8](repeating: 0x55, count: 65536)
        var written = 0
        while written < size {
            let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, min($0.count, size - written)) }
            guard n > 0 else { break }
            written += n
        }
    }
}

@Suite(.serialized) struct DiskFullTests {
    @Test(.enabled(if: canMountTmpfs, "needs root allowed to mount a tmpfs"))
    func aFullDiskAnswers503LosesNothingAndAcceptsOnceFreed() throws {
        let stack = try ReceiverStack(settings: ["WEBHOOK_MIN_FREE_BYTES": "0"])
        defer { stack.stop() }
        try stack.moveSpoolToTmpfs(size: "2m")
        defer { stack.unmountSpool() }
        try stack.fillSpool(leaving: 200_000)
        var accepted: [String: [UInt8]] = [:]
        var refused: [UInt8]? = nil
        for i in 0..<500 {
            let body = EventSamples.payload(type: "order.updated", sequence: i)
            let r = try stack.deliver(body)
            if r.status == 200 {
                accepted[try #require(json(r)["id"] as? String)] = body
            } else {
                #expect(r.status == 503, "\(r.status) \(r.text)")
                #expect(r.header("retry-after") == "60")
                refused = body
                break
            }
        }
        let full = try #require(refused, "the disk never filled")
        #expect(!accepted.isEmpty)
        // Everything acknowledged is there, whole; nothing half-written anywhere.
        let records = try stack.storedRecords()
        #expect(Dictionary(uniqueKeysWithValues: records.map { ($0.id, $0.body) }) == accepted)
        #expect(filesUnder(stack.spoolDir + "/tmp").isEmpty)
        #expect(stack.handlerLog.contains("No space left on device"))
        // Room again: the refused delivery's retry is accepted, once.
        unlink(stack.spoolDir + "/ballast")
        let retry = try stack.deliver(full)
        #expect(json(retry)["status"] as? String == "accepted")
        #expect(json(try stack.deliver(full))["status"] as? String == "duplicate")
        #expect(try stack.storedRecords().count == accepted.count + 1)
    }

    @Test(.enabled(if: canMountTmpfs, "needs root allowed to mount a tmpfs"))
    func theLowSpaceGuardRefusesBeforeWriting() throws {
        let stack = try ReceiverStack(settings: ["WEBHOOK_MIN_FREE_BYTES": "1M"])
        defer { stack.stop() }
        try stack.moveSpoolToTmpfs(size: "4m")
        defer { stack.unmountSpool() }
        try stack.fillSpool(leaving: 600_000)
        let body = EventSamples.payload(type: "booking.created")
        let r = try stack.deliver(body)
        #expect(r.status == 503)
        #expect(stack.handlerLog.contains("low disk space"))
        #expect(stack.waitingFiles.isEmpty)
        #expect(filesUnder(stack.spoolDir + "/tmp").isEmpty)
        #expect(filesUnder(stack.spoolDir + "/dedupe").isEmpty)
        unlink(stack.spoolDir + "/ballast")
        #expect(try stack.deliver(body).status == 200)
    }
}
