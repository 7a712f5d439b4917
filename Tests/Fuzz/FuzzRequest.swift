// libFuzzer target over the request pipeline (built and run by scripts/fuzz).
// Input bytes become a request as Tests/Support/FuzzInput.swift says; every
// answer must be one the status table allows.
import Glibc

nonisolated(unsafe) var receiver: Receiver? = nil
nonisolated(unsafe) var spoolRoot = ""
nonisolated(unsafe) var runs = 0

func setUp() -> Receiver {
    let base = getenv("FUZZ_SPOOL").map { String(cString: $0) } ?? "/tmp/iw-fuzz-spool"
    spoolRoot = base + "-\(getpid())"
    var config = ReceiverConfig(secretFile: "", spoolDir: spoolRoot)
    config.maxBodyBytes = 64 << 10
    config.durability = .off
    config.minFreeBytes = 0
    try? Spool(root: spoolRoot).createTree()
    let spool = (try? Spool(root: spoolRoot, durability: .off)) ?? Spool(root: spoolRoot)
    return Receiver(config: config, secrets: [fuzzSecret], spool: spool)
}

/// Empties the spool now and then, so a long run does not fill the disk.
func cleanUp() {
    for dir in ["new", "dedupe"] {
        for a in listDirectory(spoolRoot + "/" + dir) ?? [] {
            let pa = spoolRoot + "/\(dir)/\(a)"
            for b in listDirectory(pa) ?? [] {
                for c in listDirectory(pa + "/" + b) ?? [] { unlink(pa + "/\(b)/\(c)") }
                unlink(pa + "/" + b)
                rmdir(pa + "/" + b)
            }
            rmdir(pa)
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let r = receiver ?? setUp()
    receiver = r
    guard let (request, body) = fuzzRequest(Array(UnsafeBufferPointer(start: data, count: size))) else { return 0 }
    var source = BytesBody(body)
    let response = r.handle(request, body: &source)
    if let violation = fuzzViolation(response) { preconditionFailure(violation) }
    runs += 1
    if runs % 500 == 0 { cleanUp() }
    return 0
}
