// FastCGI serving with a fixed set of threads, each with its own FCGX_Request.
//
// One thread at a time (the holder of the accept lock) waits in poll(2) on the
// listening socket and on a wake pipe, and accepts the next connection itself;
// the others sleep on the lock rather than all waking for every connection.
// libfcgi only parses the records of a connection it is handed. That keeps shutdown clean: SIGTERM and SIGINT are taken by the
// main thread with sigwait(2), which writes to the wake pipe; idle threads
// return at once, busy ones finish the request in hand. No signal is ever
// delivered into a thread that is reading a request, so libfcgi's reads (which
// do not retry on EINTR) are never interrupted. Our own handlers are installed
// before FCGX_Init, which leaves handlers that are already set alone.
import CFastCGI
import Glibc
import Synchronization
import WebhookCore

final class FastCGIServer: @unchecked Sendable {
    let receiver: Receiver
    let listenFd: Int32
    let wakeFd: Int32
    let ioTimeoutMilliseconds: Int
    let logger: Logger
    let stopping = Atomic<Bool>(false)
    /// Set when the listening socket itself failed: the process stops and exits non-zero.
    let failed = Atomic<Bool>(false)
    private let acceptLock: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()

    init(receiver: Receiver, listenFd: Int32, wakeFd: Int32, ioTimeoutMilliseconds: Int, logger: Logger) {
        self.receiver = receiver
        self.listenFd = listenFd
        self.wakeFd = wakeFd
        self.ioTimeoutMilliseconds = ioTimeoutMilliseconds
        self.logger = logger
    }

    /// The listening socket is unusable: stop the whole process (a supervisor
    /// restarts it) rather than leave it alive and serving nothing.
    private func fail(_ what: String) -> Int32? {
        logger.log("error", what, [("error", .string(String(cString: strerror(errno))))])
        failed.store(true, ordering: .relaxed)
        kill(getpid(), SIGTERM)
        return nil
    }

    /// Waits for a connection; nil when told to stop.
    func nextConnection() -> Int32? {
        pthread_mutex_lock(acceptLock)
        defer { pthread_mutex_unlock(acceptLock) }
        var fds = [pollfd(fd: listenFd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeFd, events: Int16(POLLIN), revents: 0)]
        while !stopping.load(ordering: .relaxed) {
            let ready = poll(&fds, 2, -1)
            if ready < 0 {
                if errno == EINTR { continue }
                return fail("poll failed")
            }
            if fds[1].revents != 0 { return nil }
            let fd = accept(listenFd, nil, nil)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                var tv = timeval(tv_sec: ioTimeoutMilliseconds / 1000, tv_usec: (ioTimeoutMilliseconds % 1000) * 1000)
                _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                return fd
            }
            switch errno {
            case EAGAIN, EWOULDBLOCK, EINTR, ECONNABORTED, EPROTO:
                continue
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                // Out of descriptors: back off instead of spinning on a ready socket.
                logger.log("error", "accept failed", [("error", .string(String(cString: strerror(errno))))])
                var pause = timespec(tv_sec: 0, tv_nsec: 50_000_000)
                nanosleep(&pause, nil)
            default:
                return fail("accept failed")
            }
        }
        return nil
    }

    func run() {
        let request = UnsafeMutablePointer<FCGX_Request>.allocate(capacity: 1)
        defer { request.deallocate() }
        // No listening socket for libfcgi: if a connection turns out to be
        // garbage, its retry loop fails at once and we go back to poll.
        FCGX_InitRequest(request, -1, 0)
        while !stopping.load(ordering: .relaxed) {
            if request.pointee.ipcFd < 0 {
                guard let fd = nextConnection() else { break }
                request.pointee.ipcFd = fd
                // So that FCGX_Accept_r's opening FCGX_Finish_r keeps our descriptor.
                request.pointee.keepConnection = 1
            }
            if FCGX_Accept_r(request) < 0 {
                request.pointee.ipcFd = -1
                continue
            }
            serve(request)
            FCGX_Finish_r(request)
        }
        FCGX_Free(request, 1)
    }

    private func serve(_ request: UnsafeMutablePointer<FCGX_Request>) {
        let started = monotonicNanos()
        let envp = request.pointee.envp
        func param(_ name: String) -> String? {
            FCGX_GetParam(name, envp).map { String(cString: $0) }
        }
        let incoming = IncomingRequest(
            method: param("REQUEST_METHOD") ?? "", contentLength: param("CONTENT_LENGTH"),
            signature: param("HTTP_X_WEBHOOK_SIGNATURE"), contentType: param("CONTENT_TYPE"),
            userAgent: param("HTTP_USER_AGENT"), remoteAddr: param("REMOTE_ADDR") ?? "",
            requestId: param("REQUEST_ID") ?? param("HTTP_X_REQUEST_ID"), endpoint: param("WEBHOOK_ENDPOINT"))
        var body = FastCGIBody(stream: request.pointee.in)
        let response = receiver.handle(incoming, body: &body)
        let bytes = response.cgiBytes()
        let written = bytes.withUnsafeBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) {
                FCGX_PutStr($0, Int32(buffer.count), request.pointee.out)
            }
        }
        let flushed = written == Int32(bytes.count) && FCGX_FFlush(request.pointee.out) == 0
        if flushed && !response.isWorthLogging { return }
        var fields = Receiver.logFields(response, latencyMilliseconds: Double(monotonicNanos() - started) / 1e6)
        if !flushed { fields.append(("write_error", .string("the answer could not be sent to the web server"))) }
        logger.log(response.status < 500 && flushed ? "info" : "error", "request", fields)
    }
}

struct FastCGIBody: BodySource {
    let stream: UnsafeMutablePointer<FCGX_Stream>?

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard let stream, let base = buffer.baseAddress, buffer.count > 0 else { return 0 }
        let n = FCGX_GetStr(base.assumingMemoryBound(to: CChar.self), Int32(min(buffer.count, 1 << 30)), stream)
        if n == 0 && FCGX_GetError(stream) != 0 { return -1 }
        return Int(n)
    }
}

/// Binds a Unix socket at `path` (replacing a stale socket, never another file).
func bindUnixSocket(_ path: String) throws(SystemError) -> Int32 {
    var st = stat()
    if lstat(path, &st) == 0 {
        guard st.st_mode & S_IFMT == S_IFSOCK else { throw SystemError("bind", path, EEXIST) }
        unlink(path)
    }
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SystemError("socket", path, errno) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let capacity = MemoryLayout.size(ofValue: address.sun_path)
    guard path.utf8.count < capacity else {
        close(fd)
        throw SystemError("bind", path, ENAMETOOLONG)
    }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (i, b) in path.utf8.enumerated() { raw[i] = b }
    }
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard bound == 0 else {
        let code = errno
        close(fd)
        throw SystemError("bind", path, code)
    }
    guard chmod(path, 0o660) == 0, listen(fd, 1024) == 0 else {
        let code = errno
        close(fd)
        throw SystemError("listen", path, code)
    }
    return fd
}

let stopSignalNumbers = [SIGTERM, SIGINT, SIGHUP, SIGUSR1]

/// Installs do-nothing handlers for the stop signals, so that libfcgi, which
/// only installs its own where none is set, leaves them to us.
func installStopSignalHandlers() {
    var action = sigaction()
    action.__sigaction_handler.sa_handler = { _ in }
    sigemptyset(&action.sa_mask)
    for s in stopSignalNumbers { sigaction(s, &action, nil) }
    signal(SIGPIPE, SIG_IGN)
}

/// Puts the stop signals back to their default action (CGI mode).
func restoreDefaultStopSignals() {
    for s in stopSignalNumbers { signal(s, SIG_DFL) }
}

func serveFastCGI(receiver: Receiver, config: ReceiverConfig, listenPath: String?, logger: Logger) -> Int32 {
    var stopSignals = sigset_t()
    sigemptyset(&stopSignals)
    for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&stopSignals, s) }
    // Blocked everywhere (the serving threads inherit the mask) and taken by sigwait below.
    installStopSignalHandlers()
    pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
    guard FCGX_Init() == 0 else {
        logger.log("error", "FCGX_Init failed")
        return 71
    }
    let listenFd: Int32
    if let listenPath {
        do {
            listenFd = try bindUnixSocket(listenPath)
        } catch {
            logger.log("error", "cannot listen", [("error", .string(error.description))])
            return 71
        }
    } else {
        listenFd = 0
    }
    let flags = fcntl(listenFd, F_GETFL)
    _ = fcntl(listenFd, F_SETFL, flags | O_NONBLOCK)
    var pipeFds: [Int32] = [0, 0]
    guard pipe(&pipeFds) == 0 else {
        logger.log("error", "pipe failed", [("error", .string(String(cString: strerror(errno))))])
        return 71
    }
    let server = FastCGIServer(
        receiver: receiver, listenFd: listenFd, wakeFd: pipeFds[0],
        ioTimeoutMilliseconds: config.ackDeadlineMilliseconds, logger: logger)
    var threads: [pthread_t] = []
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    pthread_attr_setstacksize(&attributes, 1 << 20)
    for _ in 0..<config.threads {
        var thread = pthread_t()
        let context = Unmanaged.passRetained(server).toOpaque()
        let rc = pthread_create(&thread, &attributes, { raw in
            guard let raw else { return nil }
            Unmanaged<FastCGIServer>.fromOpaque(raw).takeRetainedValue().run()
            return nil
        }, context)
        guard rc == 0 else {
            logger.log("error", "pthread_create failed", [("error", .string(String(cString: strerror(rc))))])
            return 71
        }
        threads.append(thread)
    }
    logger.log("info", "serving", [
        ("mode", .string(listenPath == nil ? "fastcgi-fd0" : "fastcgi-listen")),
        ("socket", .string(listenPath ?? "fd 0")), ("threads", .int(config.threads)),
        ("spool", .string(config.spoolDir)), ("durability", .string(config.durability.rawValue)),
        ("pid", .int(Int(getpid()))),
    ])
    var received: Int32 = 0
    while true {
        guard sigwait(&stopSignals, &received) == 0 else { continue }
        if received == SIGHUP {
            logger.log("info", "SIGHUP ignored: restart the service to load new settings")
            continue
        }
        break
    }
    logger.log("info", "stopping", [("signal", .int(Int(received)))])
    server.stopping.store(true, ordering: .relaxed)
    var one: UInt8 = 1
    _ = write(pipeFds[1], &one, 1)
    for thread in threads { pthread_join(thread, nil) }
    if let listenPath { unlink(listenPath) }
    logger.log("info", "stopped")
    return server.failed.load(ordering: .relaxed) ? 71 : 0
}
