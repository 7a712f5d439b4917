// Scratch directories and small file helpers for tests.
import Foundation
import Glibc

/// A fresh directory under the system's temporary directory, removed by ``remove()``.
public final class TempDirectory: @unchecked Sendable {
    /// Its absolute path.
    public let path: String

    /// Creates `…/iw-<prefix>-XXXXXX`.
    public init(_ prefix: String = "test") {
        var template = Array("\(NSTemporaryDirectory())/iw-\(prefix)-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed: \(String(cString: strerror(errno)))")
        path = String(cString: made!)
    }

    /// Removes the directory and everything in it.
    public func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// `path/relative`.
    public func at(_ relative: String) -> String { path + "/" + relative }
}

/// Regular files under `directory` (recursively), as paths relative to it, sorted.
public func filesUnder(_ directory: String) -> [String] {
    guard let e = FileManager.default.enumerator(atPath: directory) else { return [] }
    var out: [String] = []
    while let item = e.nextObject() as? String {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory + "/" + item, isDirectory: &isDir), !isDir.boolValue {
            out.append(item)
        }
    }
    return out.sorted()
}

/// The permission bits of `path`.
public func modeBits(_ path: String) -> UInt32 {
    var st = stat()
    guard lstat(path, &st) == 0 else { return 0 }
    return UInt32(st.st_mode) & 0o7777
}

/// Writes `text` to `path` with `mode`.
public func writeFile(_ path: String, _ text: String, mode: Int = 0o600) {
    _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode])
}

/// Polls `condition` every 10 ms until it holds or `seconds` pass; returns whether it held.
public func waitUntil(seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Runs `body(i)` for i in 0..<count, each on a thread of its own, all at once
/// (unlike concurrentPerform, which runs only as many at a time as there are cores).
public func runConcurrently(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for i in 0..<count {
        group.enter()
        let t = Thread {
            body(i)
            group.leave()
        }
        t.stackSize = 1 << 20
        t.start()
    }
    group.wait()
}

/// Making a directory unwritable for the code under test: permission bits for
/// an ordinary user, a read-only tmpfs mounted over it for root (who ignores
/// permission bits).
public enum ReadOnlyDirectory {
    /// Whether it can be done here (root in a container may not mount).
    public static let supported: Bool = {
        guard geteuid() == 0 else { return true }
        let probe = TempDirectory("mount-probe")
        defer { probe.remove() }
        guard (try? run("/bin/mount", ["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", probe.path]))?.status == 0 else { return false }
        _ = try? run("/bin/umount", [probe.path])
        return true
    }()

    /// Makes `path` unwritable.
    public static func lock(_ path: String) throws {
        if geteuid() == 0 {
            let r = try run("/bin/mount", ["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", path])
            guard r.status == 0 else { throw StackError(description: "mount failed: \(String(decoding: r.stderr, as: UTF8.self))") }
        } else {
            chmod(path, 0o500)
        }
    }

    /// Undoes ``lock(_:)``.
    public static func unlock(_ path: String) throws {
        if geteuid() == 0 { try run("/bin/umount", [path]) } else { chmod(path, 0o700) }
    }
}

/// The node binary, when installed (the sender's reference code is JavaScript).
public let nodeBinary: String? = ["/usr/bin/node", "/usr/local/bin/node", "/usr/bin/nodejs"].first {
    FileManager.default.isExecutableFile(atPath: $0)
}
