// The real thing for end-to-end tests: webhook-fcgi listening on a Unix
// socket and nginx on a free loopback port, rendered from nginx/ by the same
// script scripts/up uses.
public import Foundation
import Glibc

/// Where the package and its built binaries are.
public enum Paths {
    /// The package root (two levels above this file).
    public static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// The directory holding the built executables.
    public static var binDir: String {
        ProcessInfo.processInfo.environment["WEBHOOK_BIN_DIR"] ?? packageRoot + "/.build/debug"
    }

    /// A built executable of this package.
    public static func binary(_ name: String) -> String { binDir + "/" + name }

    /// The nginx binary, from PATH or /usr/sbin.
    public static var nginx: String? {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/sbin:/sbin"
        for dir in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(dir)/nginx") {
            return "\(dir)/nginx"
        }
        return nil
    }
}

/// A loopback TCP port that was free a moment ago.
public func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// A TCP socket connected to 127.0.0.1:`port`, or nil; the caller closes it.
public func connectLoopback(_ port: Int) -> Int32? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    if connected == 0 { return fd }
    close(fd)
    return nil
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
public func portAnswers(_ port: Int) -> Bool {
    guard let fd = connectLoopback(port) else { return false }
    close(fd)
    return true
}

/// Why a stack did not come up.
public struct StackError: Error, CustomStringConvertible {
    /// What went wrong, with the logs that tell why.
    public let description: String

    /// An error saying `description`.
    public init(description: String) { self.description = description }
}

/// Runs a program to completion, returning its exit status and output.
@discardableResult
public func run(_ program: String, _ arguments: [String], environment: [String: String]? = nil, stdin: Data? = nil)
    throws -> (status: Int32, stdout: Data, stderr: Data)
{
    let scratch = TempDirectory("run")
    defer { scratch.remove() }
    // Files rather than pipes: a chatty child can never block on a full pipe.
    for name in ["in", "out", "err"] { _ = FileManager.default.createFile(atPath: scratch.at(name), contents: nil) }
    try (stdin ?? Data()).write(to: URL(fileURLWithPath: scratch.at("in")))
    let p = Process()
    p.executableURL = URL(fileURLWithPath: program)
    p.arguments = arguments
    if let environment { p.environment = environment }
    p.standardInput = try FileHandle(forReadingFrom: URL(fileURLWithPath: scratch.at("in")))
    p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: scratch.at("out")))
    p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: scratch.at("err")))
    try p.run()
    p.waitUntilExit()
    let out = (try? Data(contentsOf: URL(fileURLWithPath: scratch.at("out")))) ?? Data()
    let err = (try? Data(contentsOf: URL(fileURLWithPath: scratch.at("err")))) ?? Data()
    return (p.terminationStatus, out, err)
}

/// How the handler gets its FastCGI socket.
public enum HandlerLaunch: Sendable {
    /// `webhook-fcgi --listen PATH`.
    case listen
    /// `spawn-fcgi -n`, which binds the socket and hands it over as fd 0.
    case spawnFCGI
    /// As systemd's socket activation does it: the stack binds the socket
    /// once and keeps it open, and each start of the handler gets it as fd 0
    /// (StandardInput=socket), so it outlives restarts.
    case socketActivated
}

/// A listening Unix socket at `path` (mode 0660) with `backlog`, as a socket unit makes it.
public func listenUnixSocket(_ path: String, backlog: Int32 = 4096) throws -> Int32 {
    unlink(path)
    // Close-on-exec: only the handler gets it, as its fd 0.
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw StackError(description: "socket: \(String(cString: strerror(errno)))") }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
        close(fd)
        throw StackError(description: "socket path too long: \(path)")
    }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (i, b) in bytes.enumerated() { raw[i] = b }
        raw[bytes.count] = 0
    }
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard bound == 0, chmod(path, 0o660) == 0, listen(fd, backlog) == 0 else {
        let e = errno
        close(fd)
        throw StackError(description: "bind/listen \(path): \(String(cString: strerror(e)))")
    }
    return fd
}

/// webhook-fcgi and nginx, started for one test and stopped by ``stop()``.
public final class ReceiverStack: @unchecked Sendable {
    /// Scratch directory holding everything.
    public let dir: TempDirectory
    /// The spool root.
    public let spoolDir: String
    /// The secret file.
    public let secretFile: String
    /// The secrets, first one signing.
    public let secrets: [String]
    /// The FastCGI socket.
    public let socketPath: String
    /// nginx's port.
    public private(set) var port = 0
    /// The handler process.
    public private(set) var handler: Process?
    private var nginx: NginxFront?
    private let handlerLogPath: String
    private let settings: [String: String]
    private let launch: HandlerLaunch
    /// The socket held for `.socketActivated` launches.
    private var heldSocket: Int32 = -1
    /// The webhook-fcgi program each start runs (an upgrade test replaces it).
    public var handlerBinary = Paths.binary("webhook-fcgi")

    /// The webhook endpoint.
    public var url: String { "http://127.0.0.1:\(port)/webhooks/installer" }

    /// Starts both. `settings` are extra WEBHOOK_* variables; `nginxMaxBody`
    /// is nginx's client_max_body_size.
    public init(settings: [String: String] = [:], secrets: [String] = ["whsec-e2e-\(UUID().uuidString)"],
        nginxMaxBody: String = "1m", launch: HandlerLaunch = .listen) throws
    {
        self.launch = launch
        dir = TempDirectory("stack")
        spoolDir = dir.at("spool")
        secretFile = dir.at("secret")
        socketPath = dir.at("fcgi.sock")
        handlerLogPath = dir.at("webhook-fcgi.log")
        self.secrets = secrets
        self.settings = settings
        writeFile(secretFile, secrets.joined(separator: "\n") + "\n")
        try startHandler()
        try startNginx(maxBody: nginxMaxBody)
    }

    /// The handler's environment.
    public var handlerEnvironment: [String: String] {
        var env = ["WEBHOOK_SECRET_FILE": secretFile, "WEBHOOK_SPOOL_DIR": spoolDir, "PATH": "/usr/bin:/bin"]
        for (k, v) in settings { env[k] = v }
        return env
    }

    /// Sockets the handler process holds open (the listening one plus connections).
    public var handlerSocketCount: Int {
        guard let pid = handler?.processIdentifier,
            let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")
        else { return 0 }
        return fds.filter { fd in
            ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) ?? "").hasPrefix("socket:")
        }.count
    }

    /// Starts (or restarts) webhook-fcgi and waits for its socket.
    public func startHandler() throws {
        let p = Process()
        switch launch {
        case .listen:
            unlink(socketPath)
            p.executableURL = URL(fileURLWithPath: handlerBinary)
            p.arguments = ["--listen", socketPath]
        case .spawnFCGI:
            unlink(socketPath)
            p.executableURL = URL(fileURLWithPath: "/usr/bin/spawn-fcgi")
            p.arguments = ["-n", "-s", socketPath, "-M", "0660", "--", handlerBinary]
        case .socketActivated:
            if heldSocket < 0 { heldSocket = try listenUnixSocket(socketPath) }
            p.executableURL = URL(fileURLWithPath: handlerBinary)
            p.standardInput = FileHandle(fileDescriptor: heldSocket, closeOnDealloc: false)
        }
        p.environment = handlerEnvironment
        if !FileManager.default.fileExists(atPath: handlerLogPath) {
            _ = FileManager.default.createFile(atPath: handlerLogPath, contents: nil)
        }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: handlerLogPath))
        log.seekToEndOfFile()
        p.standardError = log
        p.standardOutput = log
        try p.run()
        handler = p
        let up = waitUntil { FileManager.default.fileExists(atPath: socketPath) || !p.isRunning }
        guard up, p.isRunning else {
            throw StackError(description: "webhook-fcgi did not start:\n\(handlerLog)")
        }
    }

    private func startNginx(maxBody: String) throws {
        let front = try NginxFront(socket: socketPath, runDir: dir.at("nginx"), maxBody: maxBody)
        nginx = front
        port = front.port
    }

    /// What the handler wrote to stderr so far.
    public var handlerLog: String {
        (try? String(contentsOfFile: handlerLogPath, encoding: .utf8)) ?? ""
    }

    /// Files waiting in `new/`, relative to the spool.
    public var waitingFiles: [String] { filesUnder(spoolDir + "/new") }

    /// Stops the handler with `signal` and waits; returns its exit status.
    @discardableResult
    public func stopHandler(signal: Int32 = SIGTERM) -> Int32 {
        guard let p = handler else { return -1 }
        if p.isRunning { kill(p.processIdentifier, signal) }
        p.waitUntilExit()
        handler = nil
        return p.terminationStatus
    }

    /// Stops both and removes the scratch directory.
    public func stop() {
        stopHandler()
        nginx?.stop()
        nginx = nil
        if heldSocket >= 0 { close(heldSocket) }
        heldSocket = -1
        dir.remove()
    }
}

/// nginx on a free loopback port with the snippet from nginx/, rendered by
/// scripts/render-nginx and pointed at a FastCGI `socket`.
public final class NginxFront: @unchecked Sendable {
    /// The loopback port it listens on.
    public private(set) var port = 0
    private var process: Process?

    /// The webhook endpoint.
    public var url: String { "http://127.0.0.1:\(port)/webhooks/installer" }

    /// Renders the configuration into `runDir` and starts nginx (a few ports are tried).
    public init(socket: String, runDir: String, maxBody: String = "1m") throws {
        guard let nginxPath = Paths.nginx else { throw StackError(description: "nginx is not installed (scripts/setup)") }
        try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
        var lastError = ""
        for _ in 0..<5 {
            port = freePort()
            let rendered = try run(
                "/bin/bash", [Paths.packageRoot + "/scripts/render-nginx", runDir, "127.0.0.1:\(port)", socket, maxBody])
            guard rendered.status == 0 else {
                throw StackError(description: "render-nginx failed: \(String(decoding: rendered.stderr, as: UTF8.self))")
            }
            let p = Process()
            p.executableURL = URL(fileURLWithPath: nginxPath)
            p.arguments = ["-p", runDir, "-c", runDir + "/nginx.conf", "-e", runDir + "/nginx-error.log"]
            p.standardError = FileHandle.nullDevice
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            if waitUntil({ portAnswers(port) || !p.isRunning }) && p.isRunning {
                process = p
                return
            }
            p.terminate()
            p.waitUntilExit()
            lastError = (try? String(contentsOfFile: runDir + "/nginx-error.log", encoding: .utf8)) ?? ""
        }
        throw StackError(description: "nginx did not start:\n\(lastError)")
    }

    /// Stops nginx and waits for it.
    public func stop() {
        guard let p = process else { return }
        if p.isRunning { kill(p.processIdentifier, SIGTERM) }
        p.waitUntilExit()
        process = nil
    }
}
