// The Debian package installed for real on this host: dpkg -i runs its
// maintainer scripts (user, spool, secret), the installed receiver serves a
// signed event through nginx as the service user, the installed worker hands
// it to a handler, and dpkg --purge takes it all away. It changes the host,
// so it runs only when WEBHOOK_TEST_SYSTEM_INSTALL=1 (CI sets it) and as root.
import Foundation
import Glibc
import Testing
import WebhookClient
import WebhookCore
import WebhookTestSupport

let systemInstallWanted = ProcessInfo.processInfo.environment["WEBHOOK_TEST_SYSTEM_INSTALL"] == "1"
    && geteuid() == 0 && builtPackage != nil

func shell(_ command: String) throws -> (status: Int32, out: String) {
    let r = try run("/bin/sh", ["-c", command], environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"])
    return (r.status, String(decoding: r.stdout + r.stderr, as: UTF8.self))
}

let systemScriptInstallWanted = ProcessInfo.processInfo.environment["WEBHOOK_TEST_SYSTEM_INSTALL"] == "1"
    && geteuid() == 0 && releaseBinDir != nil

@Suite(.serialized) struct SystemInstallTests {
    @Test(.enabled(if: systemScriptInstallWanted, "changes the host: set WEBHOOK_TEST_SYSTEM_INSTALL=1, run as root, with release programs built"))
    func theInstallScriptInstallsForRealAndRemovesItself() throws {
        let bin = try #require(releaseBinDir)
        let installed = try shell("bash \(installScript) --bin-dir \(bin)")
        defer { _ = try? shell("bash \(installScript) --uninstall --purge --force") }
        #expect(installed.status == 0, "\(installed.out)")
        #expect(installed.out.contains("include /etc/nginx/snippets/installer-webhooks.conf;"))
        #expect(try shell("id -u installer-webhooks").status == 0)
        var st = stat()
        #expect(stat("/usr/local/bin/webhook-fcgi", &st) == 0 && st.st_mode & 0o777 == 0o755)
        #expect(stat("/var/spool/installer-webhooks", &st) == 0 && st.st_mode & 0o777 == 0o700)
        let owner = try shell("stat -c %U /var/spool/installer-webhooks /etc/installer-webhooks/secret")
        #expect(owner.out == "installer-webhooks\ninstaller-webhooks\n", "\(owner.out)")
        if FileManager.default.fileExists(atPath: "/run/systemd/system") {
            #expect(installed.out.contains("started webhook-fcgi.socket"))
        } else {
            // No systemd: the worker runs from cron, and the receiver's command is printed.
            #expect(text("/etc/cron.d/installer-webhooks")?.contains(" installer-webhooks /usr/local/bin/webhook-worker drain") == true)
            #expect(installed.out.contains("spawn-fcgi -s /run/installer-webhooks/fcgi.sock"))
        }
        // The installed settings are valid for the installed receiver, run as root (it becomes the spool's owner).
        let check = try shell("/usr/local/bin/webhook-fcgi --check --config /etc/installer-webhooks/env")
        #expect(check.status == 0, "\(check.out)")
        #expect(try shell("stat -c %U /var/spool/installer-webhooks/new").out == "installer-webhooks\n")

        let removed = try shell("bash \(installScript) --uninstall --purge")
        #expect(removed.status == 0, "\(removed.out)")
        for path in ["/usr/local/bin/webhook-fcgi", "/etc/installer-webhooks", "/var/spool/installer-webhooks", "/etc/cron.d/installer-webhooks"] {
            #expect(!FileManager.default.fileExists(atPath: path), "\(path) left after --uninstall --purge")
        }
    }

    @Test(.enabled(if: systemInstallWanted, "changes the host: set WEBHOOK_TEST_SYSTEM_INSTALL=1, run as root, with the package built"))
    func thePackageInstallsServesDrainsAndPurges() throws {
        let deb = try #require(builtPackage)
        let installed = try shell("dpkg -i \(deb)")
        defer { _ = try? shell("dpkg --purge installer-webhooks") }
        #expect(installed.status == 0, "\(installed.out)")

        // What the maintainer scripts made.
        let user = try shell("id -u installer-webhooks")
        #expect(user.status == 0, "\(user.out)")
        let uid = UInt32(user.out.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        var st = stat()
        #expect(stat("/var/spool/installer-webhooks", &st) == 0 && st.st_uid == uid && st.st_mode & 0o777 == 0o700)
        #expect(stat("/etc/installer-webhooks/secret", &st) == 0 && st.st_uid == uid && st.st_mode & 0o777 == 0o600)
        #expect(stat("/etc/installer-webhooks/env", &st) == 0 && st.st_mode & 0o777 == 0o640)
        #expect(try shell("/usr/bin/webhook-fcgi --check --config /etc/installer-webhooks/env").status == 0)

        // The installed receiver, as the service user, behind a real nginx.
        let dir = TempDirectory("system")
        defer { dir.remove() }
        chmod(dir.path, 0o755)
        let socket = dir.at("fcgi.sock")
        let receiver = Process()
        receiver.executableURL = URL(fileURLWithPath: "/usr/bin/spawn-fcgi")
        receiver.arguments = [
            "-n", "-s", socket, "-M", "0660", "-u", "installer-webhooks", "-U", "installer-webhooks",
            "--", "/usr/bin/webhook-fcgi", "--config", "/etc/installer-webhooks/env",
        ]
        receiver.environment = ["PATH": "/usr/bin:/bin"]
        receiver.standardError = FileHandle.nullDevice
        try receiver.run()
        defer {
            receiver.terminate()
            receiver.waitUntilExit()
        }
        #expect(waitUntil { FileManager.default.fileExists(atPath: socket) })
        let nginx = try NginxFront(socket: socket, runDir: dir.at("nginx"))
        defer { nginx.stop() }

        let body = EventSamples.payload(type: "booking.created")
        let secret = try #require(text("/etc/installer-webhooks/secret")?.split(separator: "\n").first.map(String.init))
        let deliverer = Deliverer(url: HTTPURL(nginx.url)!, secrets: [Array(secret.utf8)])
        let answer = try deliverer.send(body, on: HTTPConnection(url: HTTPURL(nginx.url)!))
        #expect(answer.status == 200, "\(answer.text)")
        let waiting = filesUnder("/var/spool/installer-webhooks/new")
        #expect(waiting.count == 1)
        if let file = waiting.first {
            #expect(stat("/var/spool/installer-webhooks/new/" + file, &st) == 0 && st.st_uid == uid && st.st_mode & 0o777 == 0o600)
        }

        // The installed worker, as the service user, hands it over byte for byte.
        let out = dir.at("out")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        _ = try shell("chown installer-webhooks \(out)")
        let drained = try shell(
            "runuser -u installer-webhooks -- /usr/bin/webhook-worker drain --config /etc/installer-webhooks/env "
                + "--exec 'cat > \(out)/$WEBHOOK_ID'")
        #expect(drained.status == 0, "\(drained.out)")
        let handed = try FileManager.default.contentsOfDirectory(atPath: out)
        #expect(handed.count == 1)
        if let id = handed.first {
            #expect(try Data(contentsOf: URL(fileURLWithPath: out + "/" + id)) == Data(body))
        }

        // Purge: programs, settings, secret and the (now empty) spool go.
        let purged = try shell("dpkg --purge installer-webhooks")
        #expect(purged.status == 0, "\(purged.out)")
        for path in ["/usr/bin/webhook-fcgi", "/etc/installer-webhooks", "/var/spool/installer-webhooks", "/lib/systemd/system/webhook-fcgi.socket"] {
            #expect(!FileManager.default.fileExists(atPath: path), "\(path) left after purge")
        }
    }
}
