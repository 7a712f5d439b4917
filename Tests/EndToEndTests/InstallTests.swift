// scripts/install into a staging root (the real script, the real files; no
// user is created and nothing outside the root is touched), the systemd units
// through systemd-analyze, the man-style --help of each program, and the
// Debian package scripts/test builds.
import Foundation
import Glibc
import Testing
import WebhookCore
import WebhookTestSupport

let installScript = Paths.packageRoot + "/scripts/install"
let systemdAnalyze: String? = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].first {
    FileManager.default.isExecutableFile(atPath: $0)
}

func text(_ path: String) -> String? { try? String(contentsOfFile: path, encoding: .utf8) }

func install(_ root: String, _ extra: [String] = []) throws -> (status: Int32, out: String) {
    let r = try run(
        "/bin/bash", [installScript, "--root", root, "--bin-dir", Paths.binDir] + extra,
        environment: ["PATH": "/usr/bin:/bin:/usr/sbin:/sbin"])
    return (r.status, String(decoding: r.stdout + r.stderr, as: UTF8.self))
}

@Suite struct InstallTests {
    @Test func aStagedInstallPutsEveryFileInPlaceWithItsMode() throws {
        let dir = TempDirectory("install")
        defer { dir.remove() }
        let root = dir.at("root")
        let r = try install(root)
        #expect(r.status == 0, "\(r.out)")
        #expect(r.out.contains("include /etc/nginx/snippets/installer-webhooks.conf;"))
        let expected: [(String, UInt32)] = [
            ("usr/local/bin/webhook-fcgi", 0o755), ("usr/local/bin/webhook-worker", 0o755),
            ("usr/local/bin/webhook-loadtest", 0o755), ("etc/installer-webhooks", 0o750),
            ("etc/installer-webhooks/env", 0o640), ("etc/installer-webhooks/secret", 0o600),
            ("var/spool/installer-webhooks", 0o700), ("etc/nginx/snippets/installer-webhooks.conf", 0o644),
            ("etc/systemd/system/webhook-fcgi.socket", 0o644), ("etc/systemd/system/webhook-fcgi.service", 0o644),
            ("etc/systemd/system/webhook-worker.service", 0o644), ("etc/systemd/system/webhook-worker.timer", 0o644),
            ("etc/logrotate.d/installer-webhooks", 0o644),
        ]
        for (path, mode) in expected {
            #expect(FileManager.default.fileExists(atPath: root + "/" + path), "\(path) missing")
            #expect(modeBits(root + "/" + path) == mode, "\(path): \(String(modeBits(root + "/" + path), radix: 8))")
        }
        // The installed programs are the built ones, byte for byte.
        #expect(
            FileManager.default.contentsEqual(atPath: root + "/usr/local/bin/webhook-fcgi", andPath: Paths.binary("webhook-fcgi")))
        #expect(
            text(root + "/etc/nginx/snippets/installer-webhooks.conf")
                == text(Paths.packageRoot + "/nginx/installer-webhooks.conf"))
        // A 256-bit secret, and settings that point at it and the spool.
        let secret = try #require(text(root + "/etc/installer-webhooks/secret"))
        #expect(secret.range(of: "^[0-9a-f]{64}\n$", options: .regularExpression) != nil, "\(secret)")
        let env = try #require(text(root + "/etc/installer-webhooks/env"))
        #expect(env.contains("\nWEBHOOK_SECRET_FILE=/etc/installer-webhooks/secret\n"))
        #expect(env.contains("\nWEBHOOK_SPOOL_DIR=/var/spool/installer-webhooks\n"))
        // Every @NAME@ was filled in.
        for unit in ["webhook-fcgi.socket", "webhook-fcgi.service", "webhook-worker.service", "webhook-worker.timer"] {
            let body = try #require(text(root + "/etc/systemd/system/" + unit))
            #expect(!body.contains("@"), "\(unit)")
        }
        let service = try #require(text(root + "/etc/systemd/system/webhook-fcgi.service"))
        #expect(service.contains("ExecStart=/usr/local/bin/webhook-fcgi --config /etc/installer-webhooks/env"))
        #expect(service.contains("ReadWritePaths=/var/spool/installer-webhooks"))
        #expect(service.contains("User=installer-webhooks"))
    }

    @Test func theInstalledSettingsWorkForTheReceiver() throws {
        let dir = TempDirectory("install")
        defer { dir.remove() }
        let root = dir.at("root")
        #expect(try install(root).status == 0)
        // The rendered settings, pointed into the staging root, pass --check.
        let env = try #require(text(root + "/etc/installer-webhooks/env"))
        let staged = env.replacingOccurrences(of: "=/etc/", with: "=\(root)/etc/")
            .replacingOccurrences(of: "=/var/", with: "=\(root)/var/")
        writeFile(dir.at("env"), staged)
        let check = try run(root + "/usr/local/bin/webhook-fcgi", ["--check", "--config", dir.at("env")], environment: [:])
        #expect(check.status == 0, "\(String(decoding: check.stderr, as: UTF8.self))")
        #expect(FileManager.default.fileExists(atPath: root + "/var/spool/installer-webhooks/new"))
    }

    @Test func aSecondInstallKeepsSettingsSecretAndAnEditedSnippet() throws {
        let dir = TempDirectory("install")
        defer { dir.remove() }
        let root = dir.at("root")
        #expect(try install(root).status == 0)
        let conf = root + "/etc/installer-webhooks"
        writeFile(conf + "/env", "WEBHOOK_SECRET_FILE=/etc/installer-webhooks/secret\nWEBHOOK_SPOOL_DIR=/srv/spool\n", mode: 0o640)
        writeFile(conf + "/secret", "the-operators-secret\n")
        let snippet = root + "/etc/nginx/snippets/installer-webhooks.conf"
        writeFile(snippet, (text(snippet) ?? "") + "# edited here\n", mode: 0o644)
        let again = try install(root)
        #expect(again.status == 0, "\(again.out)")
        #expect(text(conf + "/env")?.contains("/srv/spool") == true)
        #expect(text(conf + "/secret") == "the-operators-secret\n")
        #expect(text(snippet)?.hasSuffix("# edited here\n") == true)
        #expect(text(snippet + ".dist") == text(Paths.packageRoot + "/nginx/installer-webhooks.conf"))
        #expect(again.out.contains("kept your edited"))
    }

    @Test func uninstallKeepsTheSpoolAndSecretsAndPurgeRefusesWhileEventsWait() throws {
        let dir = TempDirectory("install")
        defer { dir.remove() }
        let root = dir.at("root")
        #expect(try install(root).status == 0)
        let spool = root + "/var/spool/installer-webhooks"
        try FileManager.default.createDirectory(atPath: spool + "/new/20261204T1200", withIntermediateDirectories: true)
        writeFile(spool + "/new/20261204T1200/1796400000000000-aa", "an event waiting\n")

        let removed = try install(root, ["--uninstall"])
        #expect(removed.status == 0, "\(removed.out)")
        for gone in ["usr/local/bin/webhook-fcgi", "etc/systemd/system/webhook-fcgi.socket", "etc/nginx/snippets/installer-webhooks.conf"] {
            #expect(!FileManager.default.fileExists(atPath: root + "/" + gone), "\(gone) left behind")
        }
        #expect(FileManager.default.fileExists(atPath: root + "/etc/installer-webhooks/secret"))
        #expect(FileManager.default.fileExists(atPath: spool + "/new/20261204T1200/1796400000000000-aa"))

        let refused = try install(root, ["--uninstall", "--purge"])
        #expect(refused.status == 1)
        #expect(refused.out.contains("1 event(s) not yet handled"), "\(refused.out)")
        #expect(FileManager.default.fileExists(atPath: spool + "/new/20261204T1200/1796400000000000-aa"))
        #expect(FileManager.default.fileExists(atPath: root + "/etc/installer-webhooks/secret"))

        let purged = try install(root, ["--uninstall", "--purge", "--force"])
        #expect(purged.status == 0, "\(purged.out)")
        #expect(!FileManager.default.fileExists(atPath: spool))
        #expect(!FileManager.default.fileExists(atPath: root + "/etc/installer-webhooks"))
    }

    @Test func anIncludedSnippetOutlivesUninstall() throws {
        let dir = TempDirectory("install")
        defer { dir.remove() }
        let root = dir.at("root")
        #expect(try install(root).status == 0)
        try FileManager.default.createDirectory(atPath: root + "/etc/nginx/sites-enabled", withIntermediateDirectories: true)
        writeFile(root + "/etc/nginx/sites-enabled/default", "server { include /etc/nginx/snippets/installer-webhooks.conf; }\n")
        let removed = try install(root, ["--uninstall"])
        #expect(removed.status == 0)
        // Removing it would break the next nginx reload.
        #expect(FileManager.default.fileExists(atPath: root + "/etc/nginx/snippets/installer-webhooks.conf"))
        #expect(removed.out.contains("still includes it"))
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/sbin/logrotate") && geteuid() == 0,
        "needs logrotate, and root for its su line"))
    func theLogrotateFileRotatesTheWorkersLog() throws {
        let dir = TempDirectory("logrotate")
        defer { dir.remove() }
        let root = dir.at("root")
        #expect(try install(root, ["--user", "root"]).status == 0)
        let logs = root + "/var/log/installer-webhooks"
        let rules = try #require(text(root + "/etc/logrotate.d/installer-webhooks"))
        writeFile(dir.at("rules"), rules.replacingOccurrences(of: "/var/log/installer-webhooks", with: logs), mode: 0o644)
        writeFile(logs + "/worker.log", "{\"msg\":\"drain done\"}\n", mode: 0o640)
        let r = try run("/usr/sbin/logrotate", ["--force", "--state", dir.at("state"), dir.at("rules")], environment: [:])
        #expect(r.status == 0, "\(String(decoding: r.stderr, as: UTF8.self))")
        // copytruncate: the writer's open file keeps its place; the old lines moved on.
        #expect(text(logs + "/worker.log.1") == "{\"msg\":\"drain done\"}\n")
        #expect(text(logs + "/worker.log") == "")
    }

    @Test(.enabled(if: systemdAnalyze != nil, "systemd-analyze is not installed"))
    func theUnitFilesPassSystemdAnalyzeVerify() throws {
        let dir = TempDirectory("units")
        defer { dir.remove() }
        let root = dir.at("root")
        #expect(try install(root).status == 0)
        // Verify checks that ExecStart names an executable: point it into the root.
        let units = ["webhook-fcgi.socket", "webhook-fcgi.service", "webhook-worker.service", "webhook-worker.timer"]
        for unit in units {
            let body = try #require(text(root + "/etc/systemd/system/" + unit))
            writeFile(dir.at(unit), body.replacingOccurrences(of: "=/usr/local/bin/", with: "=\(root)/usr/local/bin/"), mode: 0o644)
        }
        let r = try run(try #require(systemdAnalyze), ["verify"] + units.map { dir.at($0) }, environment: ["PATH": "/usr/bin:/bin"])
        let output = String(decoding: r.stdout + r.stderr, as: UTF8.self)
        #expect(r.status == 0, "\(output)")
        // Unknown keys and bad values are only warnings to systemd: none may appear.
        #expect(output.isEmpty, "\(output)")
        // And the check can fail: a unit with a misspelt key is reported.
        writeFile(dir.at("webhook-fcgi.service"), (text(dir.at("webhook-fcgi.service")) ?? "") + "ProtectSystem=stricter\n", mode: 0o644)
        let bad = try run(try #require(systemdAnalyze), ["verify", dir.at("webhook-fcgi.service")], environment: ["PATH": "/usr/bin:/bin"])
        #expect(!String(decoding: bad.stdout + bad.stderr, as: UTF8.self).isEmpty)
    }
}

@Suite struct HelpTests {
    @Test(arguments: ["webhook-fcgi", "webhook-worker", "webhook-loadtest"])
    func helpReadsLikeAManPage(program: String) throws {
        let r = try run(Paths.binary(program), ["--help"], environment: [:])
        #expect(r.status == 0)
        let help = String(decoding: r.stdout, as: UTF8.self)
        let headings = help.split(separator: "\n").filter { $0.first?.isUppercase == true && $0 == $0.uppercased() }
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES", "SEE ALSO"] {
            #expect(headings.contains(Substring(section)), "\(program): no \(section)")
        }
        #expect(help.contains("\n    \(program) - "), "\(program): NAME line")
        let version = try run(Paths.binary(program), ["--version"], environment: [:])
        #expect(String(decoding: version.stdout, as: UTF8.self) == "\(program) \(installerWebhooksVersion)\n")
    }

    @Test(arguments: ["webhook-fcgi", "webhook-worker", "webhook-loadtest"])
    func everyOptionTheProgramTakesIsDocumented(program: String) throws {
        // Each option named in the source's argument parsing appears in --help.
        let source = try String(contentsOfFile: Paths.packageRoot + "/Sources/\(program)/main.swift", encoding: .utf8)
        let help = String(decoding: try run(Paths.binary(program), ["--help"], environment: [:]).stdout, as: UTF8.self)
        let regex = try NSRegularExpression(pattern: "\"(--[a-z][a-z-]+)\"")
        let options = Set(regex.matches(in: source, range: NSRange(source.startIndex..., in: source)).compactMap {
            Range($0.range(at: 1), in: source).map { String(source[$0]) }
        })
        #expect(options.count >= 3)
        for option in options.sorted() {
            #expect(help.contains(option), "\(program): \(option) is not in --help")
        }
    }
}

/// The package scripts/test builds before the tests (WEBHOOK_TEST_DEB).
let builtPackage: String? = ProcessInfo.processInfo.environment["WEBHOOK_TEST_DEB"].flatMap {
    FileManager.default.fileExists(atPath: $0) ? $0 : nil
}

@Suite struct PackageTests {
    @Test(.enabled(if: builtPackage != nil, "no package built (scripts/test builds one; WEBHOOK_TEST_DEB names it)"))
    func thePackageHoldsWhatAnInstalledHostNeeds() throws {
        let deb = try #require(builtPackage)
        let info = String(decoding: try run("/usr/bin/dpkg-deb", ["-f", deb, "Package", "Version", "Depends"]).stdout, as: UTF8.self)
        #expect(info.contains("Package: installer-webhooks"))
        #expect(info.contains("Version: \(installerWebhooksVersion)"))
        for dependency in ["libfcgi0ldbl", "libssl3", "nginx | nginx-light"] {
            #expect(info.contains(dependency), "Depends lacks \(dependency): \(info)")
        }
        let listing = String(decoding: try run("/usr/bin/dpkg-deb", ["-c", deb]).stdout, as: UTF8.self)
        for path in [
            "./usr/bin/webhook-fcgi", "./usr/bin/webhook-worker", "./usr/bin/webhook-loadtest",
            "./lib/systemd/system/webhook-fcgi.socket", "./lib/systemd/system/webhook-worker.timer",
            "./etc/nginx/snippets/installer-webhooks.conf", "./etc/installer-webhooks/env",
            "./usr/share/man/man8/webhook-fcgi.8.gz", "./usr/share/doc/installer-webhooks/copyright",
        ] {
            #expect(listing.contains(" \(path)\n"), "\(path) not in the package")
        }
        #expect(!listing.contains("secret"), "a secret must be made on the host, never shipped")
        let scratch = TempDirectory("deb")
        defer { scratch.remove() }
        #expect(try run("/usr/bin/dpkg-deb", ["-e", deb, scratch.path]).status == 0)
        #expect(
            text(scratch.at("conffiles"))?.split(separator: "\n").sorted()
                == [
                    "/etc/cron.d/installer-webhooks", "/etc/installer-webhooks/env", "/etc/logrotate.d/installer-webhooks",
                    "/etc/nginx/snippets/installer-webhooks.conf",
                ])
        for script in ["postinst", "prerm", "postrm"] {
            #expect(modeBits(scratch.at(script)) == 0o755)
            #expect(try run("/bin/sh", ["-n", scratch.at(script)]).status == 0, "\(script) does not parse")
        }
        // The programs need nothing but Debian's libraries at run time.
        #expect(try run("/usr/bin/dpkg-deb", ["-x", deb, scratch.at("root")]).status == 0)
        let ldd = String(decoding: try run("/usr/bin/ldd", [scratch.at("root/usr/bin/webhook-fcgi")]).stdout, as: UTF8.self)
        #expect(ldd.contains("libfcgi.so.0") && ldd.contains("libcrypto.so.3"), "\(ldd)")
        #expect(!ldd.contains("swift") && !ldd.contains("not found"), "\(ldd)")
        let version = try run(scratch.at("root/usr/bin/webhook-fcgi"), ["--version"], environment: [:])
        #expect(String(decoding: version.stdout, as: UTF8.self) == "webhook-fcgi \(installerWebhooksVersion)\n")
    }
}

@Suite struct SpoolOwnerTests {
    @Test(.enabled(if: geteuid() == 0, "needs root to hand a spool to another user"))
    func rootActsAsTheSpoolsOwner() throws {
        let dir = TempDirectory("owner")
        defer { dir.remove() }
        chmod(dir.path, 0o755)
        let nobody: uid_t = 65534
        let spool = dir.at("spool")
        try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: true)
        chmod(spool, 0o700)
        chown(spool, nobody, gid_t(nobody))
        writeFile(dir.at("secret"), "whsec-owner\n", mode: 0o644)
        let env = ["WEBHOOK_SECRET_FILE": dir.at("secret"), "WEBHOOK_SPOOL_DIR": spool]
        #expect(try run(Paths.binary("webhook-fcgi"), ["--check"], environment: env).status == 0)
        #expect(try run(Paths.binary("webhook-worker"), ["status"], environment: env).status == 0)
        // Everything the two made in the spool belongs to its owner, not to root.
        let made = try FileManager.default.subpathsOfDirectory(atPath: spool)
        #expect(made.contains("new") && made.contains("dedupe") && made.contains("worker"), "\(made)")
        for path in made {
            var st = stat()
            #expect(lstat(spool + "/" + path, &st) == 0 && st.st_uid == nobody, "\(path) belongs to \(st.st_uid)")
        }
        // A spool root owns stays root's: nothing changes hands.
        let rootSpool = dir.at("root-spool")
        #expect(try run(Paths.binary("webhook-fcgi"), ["--check"], environment: ["WEBHOOK_SECRET_FILE": dir.at("secret"), "WEBHOOK_SPOOL_DIR": rootSpool]).status == 0)
        var st = stat()
        #expect(stat(rootSpool + "/new", &st) == 0 && st.st_uid == 0)
    }
}
