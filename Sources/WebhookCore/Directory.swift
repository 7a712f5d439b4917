// Directory listing without Foundation.
import Glibc

/// The names in directory `path` (without `.` and `..`), unsorted; nil when it cannot be read.
public func listDirectory(_ path: String) -> [String]? {
    guard let dir = opendir(path) else { return nil }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

/// Modification time of `path` in Unix seconds, nil when it does not exist.
public func modificationTime(_ path: String) -> Int64? {
    var st = stat()
    guard lstat(path, &st) == 0 else { return nil }
    return Int64(st.st_mtim.tv_sec)
}
