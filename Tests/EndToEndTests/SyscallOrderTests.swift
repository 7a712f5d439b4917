// Invariant 1 read off the system calls: under strace, the 2xx goes to the web
// server only after the event's data, its link into new/ and that directory
// have been flushed.
import Foundation
import Glibc
import Testing
import WebhookClient
import WebhookCore
import WebhookTestSupport

@Suite(.serialized) struct SyscallOrderTests {
    static let strace = ["/usr/bin/strace", "/bin/strace"].first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test(arguments: ["request", "group"])
    func theAnswerIsWrittenOnlyAfterTheEventIsDurable(_ mode: String) throws {
        let strace = try #require(Self.strace, "strace is not installed (scripts/setup installs it)")
        let stack = try ReceiverStack(settings: ["WEBHOOK_DURABILITY": mode])
        defer { stack.stop() }
        // Restart the handler under strace on the same socket.
        stack.stopHandler()
        let trace = stack.dir.at("strace.out")
        unlink(stack.socketPath)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: strace)
        p.arguments = ["-f", "-y", "-qq", "-s", "64", "-e", "trace=fsync,fdatasync,syncfs,link,write", "-o", trace,
            Paths.binary("webhook-fcgi"), "--listen", stack.socketPath]
        p.environment = stack.handlerEnvironment
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer {
            // strace passes on nothing: stop the traced handler itself (the pid
            // that starts every line of the trace), and strace follows it out.
            let text = (try? String(contentsOfFile: trace, encoding: .utf8)) ?? ""
            if let pid = Int32(text.prefix(while: { $0 != " " })) { kill(pid, SIGTERM) }
            if !waitUntil(seconds: 5, { !p.isRunning }) { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
        }
        #expect(waitUntil { FileManager.default.fileExists(atPath: stack.socketPath) })
        let r = try stack.deliver(EventSamples.payload(type: "order.created"))
        #expect(r.status == 200)
        let id = try #require(json(r)["id"] as? String)
        let lines = try String(contentsOfFile: trace, encoding: .utf8).split(separator: "\n").map(String.init)
        func first(_ predicate: (String) -> Bool) -> Int? { lines.firstIndex(where: predicate) }
        let data = first { l in
            (l.contains("fsync(") && l.contains("/tmp/\(id)>")) || l.contains("syncfs(")
        }
        let linked = first { $0.contains("link(") && $0.contains("/new/") && $0.contains(id) }
        let bucketSync = first { l in
            guard let linked, let i = lines.firstIndex(of: l), i > linked else { return false }
            return l.contains("fsync(") && l.contains("/new/") && !l.contains(id)
        }
        let answer = first { $0.contains("write(") && $0.contains("socket:") && $0.contains("Status: 200") }
        let order = [data, linked, bucketSync, answer]
        #expect(order.allSatisfy { $0 != nil }, "missing calls in:\n\(lines.joined(separator: "\n"))")
        if let d = data, let l = linked, let b = bucketSync, let a = answer {
            #expect(d < l && l < b && b < a, "order data \(d), link \(l), fsync new/ \(b), answer \(a)")
        }
    }
}
