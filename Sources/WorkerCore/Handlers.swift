// Running a handler on one event: a command with the raw body on stdin, or an
// HTTP POST of the raw body. Either way the outcome is success or a failure
// with what the operator needs to see in the attempt log.
import CSystem
import Foundation
import Glibc
public import WebhookClient
public import WebhookCore

/// How one attempt ended.
public enum HandlerOutcome: Sendable, Equatable {
    /// Exit 0 or a 2xx answer.
    case success
    /// Anything else: `kind` is exit, signal, timeout, http, transport or spawn; `code` the exit
    /// status, signal number or HTTP status; `detail` the last lines of stderr or of the answer.
    case failure(kind: String, code: Int, detail: String)
}

/// The event an attempt is about.
public struct HandlerInput: Sendable {
    /// The decoded record.
    public var record: SpoolRecord
    /// The claimed file (its body is the file's tail).
    public var path: String
    /// Where the body starts in the file.
    public var bodyOffset: Int
    /// This attempt's number, from 1.
    public var attempt: Int
}

/// Keeps the last `limit` bytes written to it, and hands out its last lines.
struct TailBuffer {
    let limit: Int
    private(set) var bytes: [UInt8] = []

    init(limit: Int = 8192) { self.limit = limit }

    mutating func append(_ chunk: ArraySlice<UInt8>) {
        bytes.append(contentsOf: chunk)
        if bytes.count > limit { bytes.removeFirst(bytes.count - limit) }
    }

    func lastLines(_ count: Int = 10) -> String {
        let text = String(decoding: bytes, as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: true)
        return lines.suffix(count).joined(separator: "\n")
    }
}

/// Runs `/bin/sh -c COMMAND` for events.
public struct ExecRunner: Sendable {
    /// The worker's own environment, passed on with the event's variables added.
    public let baseEnvironment: [String: String]

    /// Creates a runner passing `baseEnvironment` on.
    public init(baseEnvironment: [String: String]) {
        self.baseEnvironment = baseEnvironment
    }

    /// The handler's environment for `input`.
    public func environment(for input: HandlerInput) -> [String: String] {
        var env = baseEnvironment
        let r = input.record
        env["WEBHOOK_ID"] = r.id
        env["WEBHOOK_EVENT"] = r.event
        env["WEBHOOK_ATTEMPT"] = String(input.attempt)
        env["WEBHOOK_RECEIVED_AT"] = Timestamp.format(micros: r.receivedAtMicros)
        env["WEBHOOK_ORGANIZATION_ID"] = r.organizationId ?? ""
        env["WEBHOOK_ENTITY_ID"] = r.entityId ?? ""
        env["WEBHOOK_KEY"] = r.key
        return env
    }

    /// Runs `command` on `input`, killing its process group at `timeoutMilliseconds`.
    /// `spawned` is told the process group right after the start, so a later run
    /// can kill it should this worker die.
    public func run(_ command: String, _ input: HandlerInput, timeoutMilliseconds: Int64, spawned: (Int32) -> Void)
        -> HandlerOutcome
    {
        let stdinFd = open(input.path, O_RDONLY | O_CLOEXEC)
        guard stdinFd >= 0 else { return .failure(kind: "spawn", code: Int(errno), detail: "cannot open the event file") }
        defer { close(stdinFd) }
        guard lseek(stdinFd, off_t(input.bodyOffset), SEEK_SET) == off_t(input.bodyOffset) else {
            return .failure(kind: "spawn", code: Int(errno), detail: "cannot seek to the body")
        }
        var pipeFds: [Int32] = [-1, -1]
        guard pipe(&pipeFds) == 0 else { return .failure(kind: "spawn", code: Int(errno), detail: "pipe failed") }
        for fd in pipeFds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        _ = fcntl(pipeFds[0], F_SETFL, fcntl(pipeFds[0], F_GETFL) | O_NONBLOCK)
        defer { close(pipeFds[0]) }

        let argv: [UnsafeMutablePointer<CChar>?] = ["/bin/sh", "-c", command].map { (s: String) in strdup(s) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] =
            environment(for: input).map { (k: String, v: String) in strdup(k + "=" + v) } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        let pid = argv.withUnsafeBufferPointer { a in
            envp.withUnsafeBufferPointer { e in
                iw_spawn("/bin/sh", a.baseAddress, e.baseAddress, stdinFd, pipeFds[1])
            }
        }
        close(pipeFds[1])
        guard pid > 0 else { return .failure(kind: "spawn", code: Int(errno), detail: String(cString: strerror(errno))) }
        spawned(pid)

        var tail = TailBuffer()
        let deadline = Deadline(millisecondsFromNow: Int(timeoutMilliseconds))
        let timedOut = !waitForExit(pid: pid, stderr: pipeFds[0], tail: &tail, deadline: deadline)
        if timedOut {
            kill(-pid, SIGTERM)
            if !waitForExit(pid: pid, stderr: pipeFds[0], tail: &tail, deadline: Deadline(millisecondsFromNow: 2000)) {
                kill(-pid, SIGKILL)
            }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        drain(pipeFds[0], into: &tail)
        if timedOut {
            // Nothing of a handler that overran may go on behind the next attempt.
            kill(-pid, SIGKILL)
            return .failure(kind: "timeout", code: Int(timeoutMilliseconds / 1000), detail: tail.lastLines())
        }
        if status & 0x7f == 0 {
            let code = Int((status >> 8) & 0xff)
            return code == 0 ? .success : .failure(kind: "exit", code: code, detail: tail.lastLines())
        }
        return .failure(kind: "signal", code: Int(status & 0x7f), detail: tail.lastLines())
    }

    /// Waits for `pid` to exit while collecting its stderr; false at the deadline.
    private func waitForExit(pid: Int32, stderr: Int32, tail: inout TailBuffer, deadline: Deadline) -> Bool {
        let pidfd = iw_pidfd_open(pid)
        defer { if pidfd >= 0 { close(pidfd) } }
        var stderrOpen = true
        while true {
            let left = deadline.remainingNanos
            if left == 0 { return false }
            var fds = [pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0), pollfd(fd: stderrOpen ? stderr : -1, events: Int16(POLLIN), revents: 0)]
            // Without pidfd (old kernels) fall back to checking every 10 ms.
            let slice = pidfd >= 0 ? Int32(min(left / 1_000_000 + 1, 60_000)) : 10
            let ready = poll(&fds, 2, slice)
            if ready < 0 && errno != EINTR { return false }
            if fds[1].revents != 0 { stderrOpen = drain(stderr, into: &tail) }
            if pidfd >= 0 {
                if fds[0].revents != 0 { return true }
            } else {
                // WNOWAIT leaves the child to be reaped by the caller.
                var info = siginfo_t()
                if waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info._sifields._sigchld.si_pid == pid {
                    return true
                }
            }
        }
    }

    /// Reads what is available; false once the pipe is closed.
    @discardableResult
    private func drain(_ fd: Int32, into tail: inout TailBuffer) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                tail.append(chunk[0..<n])
                continue
            }
            if n == 0 { return false }
            return errno == EAGAIN || errno == EINTR
        }
    }
}

/// POSTs events to a URL, one keep-alive connection per caller.
public final class ForwardRunner {
    private var connections: [String: HTTPConnection] = [:]

    /// Creates a runner with no open connection.
    public init() {}

    /// POSTs `input`'s raw body to `url` with its original signature header.
    public func run(_ url: HTTPURL, _ input: HandlerInput, timeoutMilliseconds: Int64) -> HandlerOutcome {
        let key = url.hostHeader
        let connection = connections[key] ?? HTTPConnection(url: url)
        connections[key] = connection
        let r = input.record
        var headers: [(String, String)] = [
            ("Content-Type", r.headers.first(where: { $0.name == "content-type" })?.value ?? "application/json"),
            ("X-Webhook-Id", r.id), ("X-Webhook-Event", r.event), ("X-Webhook-Attempt", String(input.attempt)),
        ]
        if let signature = r.headers.first(where: { $0.name == "x-webhook-signature" })?.value {
            headers.append(("X-Webhook-Signature", signature))
        }
        do {
            let response = try connection.send(
                method: "POST", path: url.path, headers: headers, body: r.body, timeoutMilliseconds: Int(timeoutMilliseconds))
            if (200..<300).contains(response.status) { return .success }
            return .failure(kind: "http", code: response.status, detail: String(response.text.prefix(500)))
        } catch .timeout {
            connection.close()
            return .failure(kind: "timeout", code: Int(timeoutMilliseconds / 1000), detail: "no answer from \(key)")
        } catch {
            connection.close()
            return .failure(kind: "transport", code: 0, detail: error.description)
        }
    }
}

/// The watchdog of one drain run: a process that kills the handlers' process
/// groups should this process die before they finish (SIGKILL included). The
/// direct child of a handler also dies with its spawning thread (PDEATHSIG);
/// the watchdog covers what that child started, which PDEATHSIG cannot reach.
public final class Watchdog: @unchecked Sendable {
    private let fd: Int32
    private let pid: Int32
    private let lock = NSLock()

    /// Starts the watchdog; nil when it cannot be started.
    public init?() {
        var child: Int32 = 0
        let fd = iw_start_watchdog(&child)
        guard fd >= 0 else { return nil }
        self.fd = fd
        self.pid = child
    }

    private func send(_ line: String) {
        let bytes = Array(line.utf8)
        lock.lock()
        defer { lock.unlock() }
        _ = bytes.withUnsafeBytes { FileOps.system.writeAll(fd, $0) }
    }

    /// Announces a handler's process group.
    public func watch(_ pgid: Int32) { send("+\(pgid)\n") }

    /// Withdraws a finished handler's process group.
    public func release(_ pgid: Int32) { send("-\(pgid)\n") }

    /// Ends the watchdog at a normal exit (it kills nothing that was released).
    public func stop() {
        close(fd)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }
}
