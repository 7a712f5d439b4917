// webhook-fcgi: the FastCGI (and CGI) front of the receive path. All logic is
// in WebhookCore; this file reads the command line and the configuration and
// hands over to FastCGI or CGI serving.
import CFastCGI
import Glibc
import WebhookCore

let usage = """
    Usage: webhook-fcgi [--config FILE] [--listen PATH] [--threads N] [--check]

    Receives Installer.com webhooks behind nginx: verifies X-Webhook-Signature
    over the raw body, drops duplicates, and answers 2xx only once the event is
    durably in the spool.

    Modes:
      (default)        FastCGI on file descriptor 0, as spawn-fcgi or systemd
                       (StandardInput=socket) provide it; run from a CGI host
                       (fcgiwrap, ...) it answers the one request in its
                       environment and exits.
      --listen PATH    bind a Unix socket at PATH (mode 0660) and serve FastCGI on it.
      --check          validate the configuration, create the spool tree, print
                       a summary and exit.

    Options:
      --config FILE    KEY=VALUE settings (systemd EnvironmentFile= format);
                       they win over the same variables in the environment.
      --threads N      requests served at once (default WEBHOOK_THREADS or 16).
      -h, --help       this text.
      --version        print the version.

    Settings (environment or --config):
      WEBHOOK_SECRET_FILE       required; one secret per line, first signs, all verify
      WEBHOOK_SPOOL_DIR         required; created (0700) when missing
      WEBHOOK_MAX_BODY_BYTES    default 1M
      WEBHOOK_DEDUPE_RETENTION  default 7d; older timestamps are refused as replays
      WEBHOOK_DEDUPE_FIELDS     default: SHA-256 of the body; or e.g. event,data.id,timestamp
      WEBHOOK_ACK_DEADLINE      default 3s; past it the answer is 503
      WEBHOOK_MIN_FREE_BYTES    default 16M; below it the answer is 503 before anything is written
      WEBHOOK_DURABILITY        group (default: concurrent requests share one flush) | request
                                (one fsync per file and directory) | off (needs WEBHOOK_UNSAFE=1; benchmarks only)

    Exit status: 0 after a clean stop, 64 bad usage, 78 bad configuration,
    73 spool cannot be created, 71 a system call failed at start-up.
    """

let version = "0.1.0"

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
