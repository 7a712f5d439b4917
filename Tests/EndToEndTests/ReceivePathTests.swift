// End to end: real nginx on a free loopback port, the real webhook-fcgi, the
// real file system, and signed deliveries over HTTP.
import Foundation
import Glibc
import Synchronization
import Testing
import WebhookClient
import WebhookCore
import WebhookTestSupport

extension ReceiverStack {
    var deliverer: Deliverer {
        Deliverer(url: HTTPURL(url)!, secrets: secrets.map { Array($0.utf8) })
    }

    func post(_ body: [UInt8], headers: [(String, String)]) throws -> HTTPResponse {
        try HTTPConnection(url: HTTPURL(url)!).send(method: "POST", headers: headers, body: body)
    }

    func deliver(_ body: [UInt8]) throws -> HTTPResponse {
        try deliverer.send(body, on: HTTPConnection(url: HTTPURL(url)!))
    }

    func storedRecords() throws -> [SpoolRecord] {
        try waitingFiles.map { try SpoolRecord.decode(Array(try Data(contentsOf: URL(fileURLWithPath: spoolDir + "/new/" + $0)))) }
    }
}

func json(_ r: HTTPResponse) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]) ?? [:]
}

@Suite(.serialized) struct ReceivePathTests {
    @Test func everyRowOfTheStatusTableThroughNginx() throws {
        let stack = try ReceiverStack(settings: ["WEBHOOK_MAX_BODY_BYTES": "65536"], nginxMaxBody: "1m")
        defer { stack.stop() }
        let connection = HTTPConnection(url: HTTPURL(stack.url)!)
        let body = EventSamples.payload(type: "order.created")

        let get = try connection.send(method: "GET")
        #expect(get.status == 405)
        #expect(get.header("allow") == "POST")
        #expect(json(get)["error"] as? String == "method_not_allowed")

        // Over the handler's limit but under nginx's: the handler decides from CONTENT_LENGTH.
        let big = [UInt8](repeating: UInt8(ascii: " "), count: 100_000)
        let tooLarge = try stack.deliverer.send(big, on: connection)
        #expect(tooLarge.status == 413)
        #expect(json(tooLarge)["error"] as? String == "too_large")
        // Over nginx's limit: nginx refuses, still in JSON.
        let huge = try stack.deliverer.send([UInt8](repeating: 32, count: 2 << 20), on: HTTPConnection(url: HTTPURL(stack.url)!))
        #expect(huge.status == 413)
        #expect(json(huge)["error"] as? String == "too_large")

        let unsigned = try stack.post(body, headers: [("Content-Type", "application/json")])
        #expect(unsigned.status == 401)
        let malformed = try stack.post(body, headers: [("X-Webhook-Signature", "sha256=xyz")])
        #expect(malformed.status == 401)
        let wrongSecret = Deliverer(url: HTTPURL(stack.url)!, secrets: [Array("not-the-secret".utf8)])
        let mismatch = try wrongSecret.send(body, on: connection)
        #expect(mismatch.status == 401)
        #expect(json(mismatch)["error"] as? String == "unauthorized")

        let notJSON = try stack.deliver(Array("event=order.created".utf8))
        #expect(notJSON.status == 400)
        #expect(json(notJSON)["error"] as? String == "bad_payload")
        let old = EventSamples.payload(type: "order.updated", nowMicros: WallClock.system.nowMicros() - 30 * 86_400_000_000)
        let replay = try stack.deliver(old)
        #expect(replay.status == 400)
        #expect(json(replay)["error"] as? String == "replay")
        #expect(stack.waitingFiles.isEmpty)

        let accepted = try stack.deliverer.send(body, on: connection)
        #expect(accepted.status == 200)
        #expect(json(accepted)["status"] as? String == "accepted")
        let id = try #require(json(accepted)["id"] as? String)
        let duplicate = try stack.deliverer.send(body, on: connection)
        #expect(duplicate.status == 200)
        #expect(json(duplicate)["status"] as? String == "duplicate")
        #expect(json(duplicate)["id"] as? String == id)

        let records = try stack.storedRecords()
        #expect(records.count == 1)
        #expect(records.first?.body == body)
        #expect(records.first?.id == id)
        #expect(records.first?.remoteAddr == "127.0.0.1")
        #expect(records.first?.headers.contains { $0.name == "x-webhook-signature" } == true)
        for file in stack.waitingFiles { #expect(modeBits(stack.spoolDir + "/new/" + file) == 0o600) }
        #expect(modeBits(stack.socketPath) == 0o660)

        // With the handler gone, nginx answers a retryable 503, never a 502.
        stack.stopHandler()
        let gone = try stack.deliver(EventSamples.payload(type: "booking.created"))
        #expect(gone.status == 503)
        #expect(gone.header("retry-after") == "60")

        let log = stack.handlerLog
        #expect(log.contains("\"outcome\":\"accepted\""))
        #expect(!log.contains(stack.secrets[0]))
        #expect(!log.contains(stack.deliverer.verifier.sign(body).dropFirst(7)))
        #expect(!log.contains("Solar Panel"))
    }

    @Test func oneEventSentFiftyTimesAtOnceLandsOnce() throws {
        let stack = try ReceiverStack()
        defer { stack.stop() }
        let body = EventSamples.payload(type: "workflow.step.completed")
        let answers = Mutex<[String]>([])
        runConcurrently(50) { _ in
            let r = try? stack.deliver(body)
            answers.withLock { $0.append(r.map { "\($0.status) \(json($0)["status"] as? String ?? "")" } ?? "no answer") }
        }
        let all = answers.withLock { $0 }
        #expect(all.filter { $0 == "200 accepted" }.count == 1, "\(all)")
        #expect(all.filter { $0 == "200 duplicate" }.count == 49, "\(all)")
        #expect(try stack.storedRecords().map(\.body) == [body])
    }

    @Test func everySampleEventTypeIsAccepted() throws {
        let stack = try ReceiverStack()
        defer { stack.stop() }
        let connection = HTTPConnection(url: HTTPURL(stack.url)!)
        for type in EventSamples.types + ["order.someday.new"] {
            let r = try stack.deliverer.send(EventSamples.payload(type: type), on: connection)
            #expect(r.status == 200, "\(type): \(r.text)")
        }
        #expect(Set(try stack.storedRecords().map(\.event)) == Set(EventSamples.types + ["order.someday.new"]))
    }

    @Test(.enabled(if: ReadOnlyDirectory.supported, "root here may not mount the read-only tmpfs this needs"))
    func anUnwritableSpoolAnswers503AndKeepsNothing() throws {
        let stack = try ReceiverStack()
        defer { stack.stop() }
        let tmp = stack.spoolDir + "/tmp"
        try ReadOnlyDirectory.lock(tmp)
        let body = EventSamples.payload(type: "booking.updated")
        let refused = try stack.deliver(body)
        try ReadOnlyDirectory.unlock(tmp)
        #expect(refused.status == 503)
        #expect(refused.header("retry-after") == "60")
        #expect(json(refused)["error"] as? String == "unavailable")
        #expect(stack.waitingFiles.isEmpty)
        // The sender's retry, once the disk is back, is accepted exactly once.
        let retried = try stack.deliver(body)
        #expect(json(retried)["status"] as? String == "accepted")
        #expect(stack.waitingFiles.count == 1)
        #expect(stack.handlerLog.contains("\"status\":503"))
    }

    @Test func theHealthEndpointReportsTheSpoolThroughTheSnippet() throws {
        let stack = try ReceiverStack()
        defer { stack.stop() }
        let healthURL = HTTPURL(stack.url + "/health")!
        let healthy = try HTTPConnection(url: healthURL).send(method: "GET")
        #expect(healthy.status == 200, "\(healthy.text)")
        #expect(json(healthy)["spool_writable"] as? Bool == true)
        #expect(json(healthy)["oldest_waiting_seconds"] is NSNull)
        #expect(try stack.deliver(EventSamples.payload(type: "order.created")).status == 200)
        let waiting = try HTTPConnection(url: healthURL).send(method: "GET")
        #expect((json(waiting)["oldest_waiting_seconds"] as? Int).map { $0 >= 0 && $0 < 120 } == true, "\(waiting.text)")
        // A POST to the health location is not taken for an event.
        let posted = try HTTPConnection(url: healthURL).send(method: "POST", body: EventSamples.payload(type: "order.created"))
        #expect(posted.status == 405)
        #expect(stack.waitingFiles.count == 1)
        // Healthy answers leave no log line; the refused POST does (written just after its answer).
        #expect(waitUntil { stack.handlerLog.contains("\"outcome\":\"method_not_allowed\"") })
        #expect(!stack.handlerLog.contains("\"outcome\":\"healthy\""), "\(stack.handlerLog)")
        if ReadOnlyDirectory.supported {
            try ReadOnlyDirectory.lock(stack.spoolDir + "/tmp")
            let unwritable = try HTTPConnection(url: healthURL).send(method: "GET")
            try ReadOnlyDirectory.unlock(stack.spoolDir + "/tmp")
            #expect(unwritable.status == 503, "\(unwritable.text)")
            #expect(json(unwritable)["spool_writable"] as? Bool == false)
        }
        // With the handler gone, nginx answers for it: 503, never a 502.
        _ = stack.stopHandler()
        let gone = try HTTPConnection(url: healthURL).send(method: "GET")
        #expect(gone.status == 503)
        #expect(json(gone)["error"] as? String == "unavailable")
    }

    @Test(.enabled(if: nodeBinary != nil, "node is not installed; the sender's reference computation cannot be run"))
    func theSendersReferenceComputationIsAccepted() throws {
        let node = try #require(nodeBinary)
        let stack = try ReceiverStack()
        defer { stack.stop() }
        let body = EventSamples.payload(type: "order.assigned")
        let bodyFile = stack.dir.at("body.json")
        try Data(body).write(to: URL(fileURLWithPath: bodyFile))
        // HMAC-SHA256 of the raw body, hex digest, "sha256=" prefix: as the sender documents it.
        let script = """
            const crypto = require('node:crypto'); const fs = require('node:fs');
            const secret = fs.readFileSync(process.argv[1], 'utf8').split('\\n')[0];
            const body = fs.readFileSync(process.argv[2]);
            process.stdout.write('sha256=' + crypto.createHmac('sha256', secret).update(body).digest('hex'));
            """
        let signed = try run(node, ["-e", script, stack.secretFile, bodyFile])
        let header = String(decoding: signed.stdout, as: UTF8.self)
        #expect(header.count == 71)
        let r = try stack.post(body, headers: [("X-Webhook-Signature", header), ("Content-Type", "application/json")])
        #expect(r.status == 200, "\(r.text)")
        #expect(json(r)["status"] as? String == "accepted")
    }

    @Test func secretRotationAcceptsTheOldSecret() throws {
        let stack = try ReceiverStack(secrets: ["whsec-new-1", "whsec-old-0"])
        defer { stack.stop() }
        let old = Deliverer(url: HTTPURL(stack.url)!, secrets: [Array("whsec-old-0".utf8)])
        let r = try old.send(EventSamples.payload(type: "order.created"), on: HTTPConnection(url: HTTPURL(stack.url)!))
        #expect(r.status == 200)
    }

    @Test func shutdownFinishesTheRequestInFlight() throws {
        let stack = try ReceiverStack()
        defer { stack.stop() }
        let body = EventSamples.payload(type: "order.completed")
        let key = Hex.encode(Crypto.sha256(body))
        // Hold the event's dedupe lock so its request stays in flight in the handler.
        let store = Spool(root: stack.spoolDir).lockStore
        let held = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 1000), nowSeconds: 0)
        let baseline = stack.handlerSocketCount
        let answer = Mutex<HTTPResponse?>(nil)
        let sender = Thread {
            let r = try? stack.deliver(body)
            answer.withLock { $0 = r }
        }
        sender.start()
        #expect(waitUntil { stack.handlerSocketCount > baseline }, "the request never reached the handler")
        let pid = try #require(stack.handler?.processIdentifier)
        kill(pid, SIGTERM)
        #expect(waitUntil { stack.handlerLog.contains("\"msg\":\"stopping\"") })
        // It has taken the signal, and must not exit while the request is unanswered.
        #expect(stack.handler?.isRunning == true)
        #expect(answer.withLock { $0 } == nil)
        store.release(held)
        #expect(waitUntil { answer.withLock { $0 } != nil })
        let r = try #require(answer.withLock { $0 })
        #expect(r.status == 200)
        #expect(json(r)["status"] as? String == "accepted")
        #expect(waitUntil { stack.handler?.isRunning == false })
        #expect(stack.handler?.terminationStatus == 0)
        #expect(stack.handlerLog.contains("\"msg\":\"stopped\""))
        #expect(stack.waitingFiles.count == 1)
    }

    @Test func spawnFcgiHandsTheSocketOverAsFdZero() throws {
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/spawn-fcgi"), "spawn-fcgi is not installed (scripts/setup)")
        let stack = try ReceiverStack(launch: .spawnFCGI)
        defer { stack.stop() }
        let r = try stack.deliver(EventSamples.payload(type: "booking.cancelled"))
        #expect(r.status == 200)
        #expect(stack.handlerLog.contains("\"mode\":\"fastcgi-fd0\""))
        #expect(stack.waitingFiles.count == 1)
    }
}

@Suite struct CGIModeTests {
    func cgi(_ env: [String: String], body: [UInt8], dir: TempDirectory) throws -> (status: Int32, out: String, err: String) {
        var environment = ["WEBHOOK_SECRET_FILE": dir.at("secret"), "WEBHOOK_SPOOL_DIR": dir.at("spool"), "PATH": "/usr/bin:/bin"]
        for (k, v) in env { environment[k] = v }
        let r = try run(Paths.binary("webhook-fcgi"), [], environment: environment, stdin: Data(body))
        return (r.status, String(decoding: r.stdout, as: UTF8.self), String(decoding: r.stderr, as: UTF8.self))
    }

    @Test func answersTheOneRequestInItsEnvironment() throws {
        let dir = TempDirectory("cgi")
        defer { dir.remove() }
        writeFile(dir.at("secret"), "whsec-cgi\n")
        let body = EventSamples.payload(type: "order.dispatched")
        let sig = SignatureVerifier(secrets: [Array("whsec-cgi".utf8)]).sign(body)
        let env = ["REQUEST_METHOD": "POST", "CONTENT_LENGTH": String(body.count), "HTTP_X_WEBHOOK_SIGNATURE": sig, "REMOTE_ADDR": "198.51.100.7"]
        let ok = try cgi(env, body: body, dir: dir)
        #expect(ok.status == 0)
        #expect(ok.out.hasPrefix("Status: 200 OK\r\n"))
        #expect(ok.out.contains("\"status\":\"accepted\""))
        #expect(ok.err.contains("\"mode\":\"cgi\""))
        let files = filesUnder(dir.at("spool/new"))
        #expect(files.count == 1)
        let record = try SpoolRecord.decode(Array(try Data(contentsOf: URL(fileURLWithPath: dir.at("spool/new/" + files[0])))))
        #expect(record.body == body)
        #expect(record.remoteAddr == "198.51.100.7")

        var short = env
        short["CONTENT_LENGTH"] = String(body.count + 10)
        #expect(try cgi(short, body: body, dir: dir).out.hasPrefix("Status: 400 Bad Request\r\n"))
        var long = env
        long["CONTENT_LENGTH"] = String(body.count - 10)
        #expect(try cgi(long, body: body, dir: dir).out.hasPrefix("Status: 400 Bad Request\r\n"))
        #expect(try cgi(["REQUEST_METHOD": "PUT"], body: [], dir: dir).out.hasPrefix("Status: 405 Method Not Allowed\r\n"))
        #expect(filesUnder(dir.at("spool/new")).count == 1)
        // A healthy answer is given and, as in FastCGI mode, not logged.
        let health = try cgi(["REQUEST_METHOD": "GET", "WEBHOOK_ENDPOINT": "health"], body: [], dir: dir)
        #expect(health.out.hasPrefix("Status: 200 OK\r\n"), "\(health.out)")
        #expect(health.err.isEmpty, "\(health.err)")
    }

    @Test func refusesToStartWithoutASecret() throws {
        let dir = TempDirectory("cgi")
        defer { dir.remove() }
        writeFile(dir.at("secret"), "\n")
        let r = try cgi(["REQUEST_METHOD": "POST"], body: [], dir: dir)
        #expect(r.status == 78)
        #expect(r.err == "webhook-fcgi: WEBHOOK_SECRET_FILE \(dir.at("secret")) holds no secret\n")
        #expect(r.out.isEmpty)
        let unset = try run(Paths.binary("webhook-fcgi"), ["--check"], environment: ["WEBHOOK_SPOOL_DIR": dir.at("spool")])
        #expect(unset.status == 78)
        #expect(String(decoding: unset.stderr, as: UTF8.self).contains("WEBHOOK_SECRET_FILE is not set"))
    }

    /// fd 0 is a socket that is not listening: the handler must not sit there
    /// alive and serving nothing, but stop with a non-zero status for its supervisor.
    @Test func aBrokenListeningSocketStopsTheProcess() throws {
        let dir = TempDirectory("fd0")
        defer { dir.remove() }
        writeFile(dir.at("secret"), "whsec-fd0\n")
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Paths.binary("webhook-fcgi"))
        p.environment = ["WEBHOOK_SECRET_FILE": dir.at("secret"), "WEBHOOK_SPOOL_DIR": dir.at("spool")]
        p.standardInput = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
        let log = dir.at("log")
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        try p.run()
        #expect(waitUntil(seconds: 20) { !p.isRunning })
        if p.isRunning { p.terminate() }
        p.waitUntilExit()
        #expect(p.terminationStatus == 71)
        #expect(((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("\"msg\":\"accept failed\""))
    }

    @Test func helpAndBadUsage() throws {
        let help = try run(Paths.binary("webhook-fcgi"), ["--help"], environment: [:])
        #expect(help.status == 0)
        #expect(String(decoding: help.stdout, as: UTF8.self).contains("WEBHOOK_SECRET_FILE"))
        let bad = try run(Paths.binary("webhook-fcgi"), ["--frobnicate"], environment: [:])
        #expect(bad.status == 64)
    }
}

@Suite struct SendCommandTests {
    @Test func sendDeliversOneSignedEventEndToEnd() throws {
        let stack = try ReceiverStack()
        defer { stack.stop() }
        let r = try run(Paths.binary("webhook-loadtest"), ["send", "--url", stack.url, "--secret-file", stack.secretFile, "--event", "booking.created"], environment: [:])
        let out = String(decoding: r.stdout, as: UTF8.self)
        #expect(r.status == 0, "\(out)")
        #expect(out.hasPrefix("status 200, "))
        #expect(out.contains("\"status\":\"accepted\""))
        #expect(try stack.storedRecords().map(\.event) == ["booking.created"])
        let wrong = stack.dir.at("wrong")
        writeFile(wrong, "nope\n")
        let refused = try run(Paths.binary("webhook-loadtest"), ["send", "--url", stack.url, "--secret-file", wrong], environment: [:])
        #expect(refused.status == 1)
        #expect(String(decoding: refused.stdout, as: UTF8.self).hasPrefix("status 401"))
        let usage = try run(Paths.binary("webhook-loadtest"), ["send", "--url", "ftp://x"], environment: [:])
        #expect(usage.status == 2)
    }
}
