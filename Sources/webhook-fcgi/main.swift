// webhook-fcgi: the FastCGI (and CGI) front of the receive path. All logic is
// in WebhookCore; this file reads the command line and the configuration and
// hands over to FastCGI or CGI serving.
import CFastCGI
import Glibc
import WebhookCore

let usage = """
    NAME
        webhook-fcgi - receive Installer.com webhooks behind nginx, durably

    SYNOPSIS
        webhook-fcgi [--config FILE] [--threads N]
        webhook-fcgi --listen PATH [--config FILE] [--threads N]
        webhook-fcgi --check [--config FILE]

    DESCRIPTION
        Verifies X-Webhook-Signature (HMAC-SHA256 of the raw body) on each POST that nginx
        passes over FastCGI, drops deliveries already accepted, writes the event to the spool
        and makes it durable, and only then answers 200. Every failure has its own status:
        405, 413, 400 (bad_length, bad_payload, replay), 401, and 503 with Retry-After when
        the event could not be made durable. A GET routed with WEBHOOK_ENDPOINT=health (the
        nginx snippet's /webhooks/installer/health) reports whether the spool can take events.

        By default FastCGI is served on file descriptor 0, the listening socket that systemd
        (StandardInput=socket) or spawn-fcgi provides; run from a CGI host (fcgiwrap, ...) it
        answers the one request in its environment and exits. SIGTERM or SIGINT stops
        accepting, lets the requests in flight finish, and exits 0.

    OPTIONS
        --config FILE
            KEY=VALUE settings in systemd's EnvironmentFile= format; they win over the same
            variables in the environment.
        --listen PATH
            bind a Unix socket at PATH (mode 0660) and serve FastCGI on it.
        --threads N
            requests served at once, 1 to 1024 (default WEBHOOK_THREADS or 16).
        --check
            validate the configuration, create the spool tree, print a summary and exit.
        -h, --help
            this text.
        --version
            print the version.

    ENVIRONMENT
        WEBHOOK_SECRET_FILE
            required; one secret per line, the first signs, all verify (rotation).
        WEBHOOK_SPOOL_DIR
            required; the spool root on a local file system, created 0700 when missing.
        WEBHOOK_MAX_BODY_BYTES
            largest body accepted (default 1M); keep nginx's client_max_body_size equal.
        WEBHOOK_DEDUPE_RETENTION
            how long a delivery is remembered, and how far a timestamp may be from now (default 7d).
        WEBHOOK_DEDUPE_FIELDS
            payload paths the dedupe key is made from, e.g. event,data.id,timestamp
            (default: the SHA-256 of the body).
        WEBHOOK_ACK_DEADLINE
            answer 503 rather than run past this (default 3s; must stay under 5s).
        WEBHOOK_THREADS
            requests served at once (default 16).
        WEBHOOK_MIN_FREE_BYTES
            below this much free space on the spool the answer is 503 before anything is
            written (default 16M; 0 turns it off).
        WEBHOOK_DURABILITY
            group (default: concurrent requests share one flush), request (an fsync of each file
            and its directory), or off (no fsync; refused unless WEBHOOK_UNSAFE=1; benchmarks only).

    FILES
        /etc/installer-webhooks/env
            the settings file of an installed host.
        /var/spool/installer-webhooks
            the spool of an installed host: new/ holds accepted events until the worker takes them.
        /run/installer-webhooks/fcgi.sock
            the socket the nginx snippet connects to.

    EXIT STATUS
        0 after a clean stop, 64 bad usage, 78 bad configuration, 73 the spool cannot be
        created, 71 a system call failed (at start-up, or the listening socket failed).
        Started as root on a spool that belongs to another user, it first becomes that user.

    EXAMPLES
        Check an installed configuration:
        $ webhook-fcgi --check --config /etc/installer-webhooks/env
        Serve on a socket of its own, for a test:
        $ WEBHOOK_SECRET_FILE=secret WEBHOOK_SPOOL_DIR=spool webhook-fcgi --listen /tmp/fcgi.sock

    SEE ALSO
        webhook-worker(8), webhook-loadtest(1), /usr/share/doc/installer-webhooks/README.md.gz
    """

let version = installerWebhooksVersion

func fail(_ code: Int32, _ message: String) -> Never {
    let line = "webhook-fcgi: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(code)
}

struct Options {
    var configFile: String? = nil
    var listenPath: String? = nil
    var threads: Int? = nil
    var check = false
}

func parseOptions(_ args: [String]) -> Options {
    var options = Options()
    var i = 1
    func value(_ flag: String) -> String {
        i += 1
        guard i < args.count else { fail(64, "\(flag) needs a value\n\(usage)") }
        return args[i]
    }
    while i < args.count {
        let arg = args[i]
        switch arg {
        case "-h", "--help":
            print(usage)
            exit(0)
        case "--version":
            print("webhook-fcgi \(version)")
            exit(0)
        case "--config": options.configFile = value(arg)
        case "--listen": options.listenPath = value(arg)
        case "--threads":
            let v = value(arg)
            guard let n = Int(v), (1...1024).contains(n) else { fail(64, "--threads \(v): expected 1 to 1024") }
            options.threads = n
        case "--check": options.check = true
        default:
            fail(64, "unknown argument \(arg)\n\(usage)")
        }
        i += 1
    }
    return options
}

func currentEnvironment() -> [String: String] {
    var out: [String: String] = [:]
    var p = environ
    while let entry = p.pointee {
        let s = String(cString: entry)
        if let eq = s.firstIndex(of: "=") { out[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
        p += 1
    }
    return out
}

umask(0o077)
let options = parseOptions(CommandLine.arguments)
let logger = Logger.stderr(program: "webhook-fcgi")
var config: ReceiverConfig
let secrets: [[UInt8]]
do {
    let (loaded, warnings) = try ReceiverConfig.load(environment: currentEnvironment(), configFile: options.configFile)
    config = loaded
    for w in warnings { logger.log("warn", w) }
} catch {
    fail(78, error.description)
}
// Started as root on a spool that belongs to the service user: become that
// user before anything is read or created.
do {
    try becomeSpoolOwner(spoolDir: config.spoolDir)
} catch {
    fail(71, "cannot become the spool's owner: \(error)")
}
do {
    secrets = try config.loadSecrets()
} catch {
    fail(78, error.description)
}
if let n = options.threads { config.threads = n }
// Our handlers go in before libfcgi initialises (FCGX_IsCGI does that), since
// it installs its own only where none is set; FastCGI serving then blocks these
// signals and takes them with sigwait. A CGI process keeps the defaults.
installStopSignalHandlers()
let cgiMode = options.listenPath == nil && FCGX_IsCGI() != 0
if cgiMode { restoreDefaultStopSignals() }
// A CGI process answers one request: a batch of one shares nothing, and one
// fsync of its own file is cheaper than a syncfs of the whole file system.
let durability: Durability = cgiMode && config.durability == .group ? .request : config.durability
let spool: Spool
do {
    try Spool(root: config.spoolDir).createTree()
    spool = try Spool(root: config.spoolDir, durability: durability)
} catch {
    fail(73, "spool \(config.spoolDir): \(error)")
}
if let warning = spool.fileSystemWarning() { logger.log("warn", warning) }
let receiver = Receiver(config: config, secrets: secrets, spool: spool)

if options.check {
    print("configuration ok: spool \(config.spoolDir), \(secrets.count) secret(s), max body \(config.maxBodyBytes) bytes, "
        + "retention \(config.retentionSeconds)s, ack deadline \(config.ackDeadlineMilliseconds)ms, durability \(config.durability.rawValue)")
    exit(0)
}

if cgiMode {
    exit(serveCGI(receiver: receiver, logger: logger))
}
exit(serveFastCGI(receiver: receiver, config: config, listenPath: options.listenPath, logger: logger))
