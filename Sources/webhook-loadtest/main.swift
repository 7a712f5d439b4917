// webhook-loadtest: drives signed deliveries at a receive endpoint.
// `send` is the local twin of the sender's "test button": one signed delivery.
import Glibc
import WebhookClient
import WebhookCore

let usage = """
    Usage: webhook-loadtest send [--url URL] --secret-file FILE [--event TYPE | --body FILE] [--timeout DURATION]

    send    POST one signed delivery, as Installer.com would, and print the
            status, the acknowledgement latency and the answer.

    Options:
      --url URL            endpoint (default http://127.0.0.1:8080/webhooks/installer)
      --secret-file FILE   secrets, one per line; the first signs (default $WEBHOOK_SECRET_FILE)
      --event TYPE         a fresh sample event of TYPE (default order.created); one of:
                           \(EventSamples.types.joined(separator: " "))
      --body FILE          send FILE's bytes exactly instead of a sample
      --timeout DURATION   give up after this long (default 10s; 500ms, 5s, 2m)
      -h, --help           this text

    Exit status: 0 when the answer is 2xx, 1 otherwise or on a transport error, 2 on bad usage.
    """

func die(_ code: Int32, _ message: String) -> Never {
    let line = "webhook-loadtest: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(code)
}

func runSend(_ args: ArraySlice<String>) -> Int32 {
    var urlText = "http://127.0.0.1:8080/webhooks/installer"
    var secretFile = getenv("WEBHOOK_SECRET_FILE").map { String(cString: $0) }
    var event = "order.created"
    var bodyFile: String? = nil
    var timeoutMs: Int64 = 10_000
    var i = args.startIndex
    func value(_ flag: String) -> String {
        i += 1
        guard i < args.endIndex else { die(2, "\(flag) needs a value") }
        return args[i]
    }
    while i < args.endIndex {
        let arg = args[i]
        switch arg {
        case "-h", "--help":
            print(usage)
            exit(0)
        case "--url": urlText = value(arg)
        case "--secret-file": secretFile = value(arg)
        case "--event": event = value(arg)
        case "--body": bodyFile = value(arg)
        case "--timeout":
            let v = value(arg)
            guard let ms = DurationText.parseMilliseconds(v), ms > 0 else { die(2, "--timeout \(v): expected a duration such as 5s") }
            timeoutMs = ms
        default: die(2, "unknown argument \(arg)\n\(usage)")
        }
        i += 1
    }
    guard let url = HTTPURL(urlText) else { die(2, "--url \(urlText): expected http://host[:port]/path") }
    guard let secretFile else { die(2, "--secret-file is required (or set WEBHOOK_SECRET_FILE)") }
    let secrets: [[UInt8]]
    do { secrets = try ReceiverConfig.loadSecrets(from: secretFile) } catch { die(2, error.description) }
    let body: [UInt8]
    if let bodyFile {
        do { body = try readWholeFile(bodyFile, limit: 64 << 20) } catch { die(2, "--body \(bodyFile): \(error)") }
    } else {
        body = EventSamples.payload(type: event)
    }
    let deliverer = Deliverer(url: url, secrets: secrets)
    let connection = HTTPConnection(url: url)
    let started = monotonicNanos()
    do {
        let response = try deliverer.send(body, on: connection, timeoutMilliseconds: Int(timeoutMs))
        let ms = Double(monotonicNanos() - started) / 1e6
        print("status \(response.status), \(JSONText.number(ms)) ms, \(body.count) bytes sent")
        print(response.text.hasSuffix("\n") ? String(response.text.dropLast()) : response.text)
        return (200..<300).contains(response.status) ? 0 : 1
    } catch {
        let ms = Double(monotonicNanos() - started) / 1e6
        print("no answer after \(JSONText.number(ms)) ms: \(error)")
        return 1
    }
}

let arguments = CommandLine.arguments
guard arguments.count >= 2 else { die(2, "a command is required\n\(usage)") }
switch arguments[1] {
case "send": exit(runSend(arguments.dropFirst(2)))
case "-h", "--help", "help":
    print(usage)
    exit(0)
default: die(2, "unknown command \(arguments[1])\n\(usage)")
}
