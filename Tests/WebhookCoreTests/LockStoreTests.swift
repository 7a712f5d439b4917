import Foundation
import Glibc
import Synchronization
import Testing
import WebhookCore
import WebhookTestSupport

@Suite struct LockStoreTests {
    let key = String(repeating: "ab", count: 32)

    @Test func statesMoveFromAbsentToInProgressToCommitted() throws {
        let dir = TempDirectory("locks")
        defer { dir.remove() }
        let store = LockStore(root: dir.path)
        let m1 = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 1000), nowSeconds: 100)
        #expect(m1.state == .absent)
        #expect(m1.path == dir.path + "/ab/ab/" + key)
        try store.markInProgress(m1, spoolPath: "new/b/id1", nowSeconds: 100)
        store.release(m1)
        let m2 = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 1000), nowSeconds: 100)
        #expect(m2.state == .inProgress(spoolPath: "new/b/id1"))
        try store.markCommitted(m2, id: "id1", expiresAt: 200)
        store.release(m2)
        let m3 = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 1000), nowSeconds: 150)
        #expect(m3.state == .committed(id: "id1", expiresAt: 200))
        store.release(m3)
        // Past its retention the marker no longer counts.
        let m4 = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 1000), nowSeconds: 201)
        #expect(m4.state == .absent)
        store.clear(m4)
        store.release(m4)
        #expect(modeBits(m1.path) == 0o600)
        #expect(modeBits(dir.path + "/ab") == 0o700)
    }

    @Test func aHeldKeyMakesOthersWaitUntilTheDeadline() throws {
        let dir = TempDirectory("locks")
        defer { dir.remove() }
        let store = LockStore(root: dir.path)
        let held = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 1000), nowSeconds: 1)
        let started = monotonicNanos()
        #expect(throws: LockStoreError.timedOut) {
            try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 150), nowSeconds: 1)
        }
        #expect(monotonicNanos() - started >= 150_000_000)
        // Another key is not held up.
        let other = try store.acquire(key: String(repeating: "cd", count: 32), deadline: Deadline(millisecondsFromNow: 0), nowSeconds: 1)
        store.release(other)
        store.release(held)
        let again = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 0), nowSeconds: 1)
        store.release(again)
    }

    @Test func aWaiterSeesTheOutcomeOfTheHolder() throws {
        let dir = TempDirectory("locks")
        defer { dir.remove() }
        let store = LockStore(root: dir.path)
        let held = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 1000), nowSeconds: 1)
        let k = key
        let waiter = Thread {
            let m = try? store.acquire(key: k, deadline: Deadline(millisecondsFromNow: 5000), nowSeconds: 1)
            if let m {
                store.release(m)
                writeFile(dir.at("seen"), "\(m.state)")
            }
        }
        waiter.start()
        try store.markCommitted(held, id: "first", expiresAt: 99)
        store.release(held)
        #expect(waitUntil { FileManager.default.fileExists(atPath: dir.at("seen")) })
        #expect((try? String(contentsOfFile: dir.at("seen"), encoding: .utf8)) == "\(MarkerState.committed(id: "first", expiresAt: 99))")
    }

    @Test func aMarkerUnlinkedWhileWaitingIsNotTrusted() throws {
        let dir = TempDirectory("locks")
        defer { dir.remove() }
        let store = LockStore(root: dir.path)
        let held = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 1000), nowSeconds: 1)
        try store.markCommitted(held, id: "old", expiresAt: 99)
        // A pruner removes the marker while a request holds it.
        unlink(held.path)
        store.release(held)
        let m = try store.acquire(key: key, deadline: Deadline(millisecondsFromNow: 1000), nowSeconds: 1)
        #expect(m.state == .absent)
        #expect(FileManager.default.fileExists(atPath: m.path))
        store.release(m)
    }

    @Test func aPrunerOvertakenBetweenOpenAndLockLeavesTheNewMarker() throws {
        let dir = TempDirectory("locks")
        defer { dir.remove() }
        let plain = LockStore(root: dir.path)
        let old = try plain.acquire(key: key, deadline: Deadline(millisecondsFromNow: 1000), nowSeconds: 1)
        try plain.markCommitted(old, id: "old", expiresAt: 10)
        plain.release(old)
        let path = old.path
        // Right after this pruner opens the expired marker, another pruner
        // removes it and a request records a new acceptance at the same path.
        let overtaken = Atomic<Bool>(false)
        var ops = FileOps.system
        ops.open = { p, flags, mode in
            let fd = Glibc.open(p, flags, mode)
            if p == path && !overtaken.exchange(true, ordering: .relaxed) {
                unlink(p)
                writeFile(p, "C new 1000\n")
            }
            return fd
        }
        let pruner = LockStore(root: dir.path, fs: ops)
        let count = pruner.prune(shard: "ab/ab", nowSeconds: 100, staleSeconds: 50)
        let raced = overtaken.load(ordering: .relaxed)
        #expect(raced)
        #expect(count.removed == 0)
        #expect((try? String(contentsOfFile: path, encoding: .utf8)) == "C new 1000\n")
        // The expired marker itself, met without a race, is removed.
        writeFile(path, "C old 10\n")
        #expect(plain.prune(shard: "ab/ab", nowSeconds: 100, staleSeconds: 50).removed == 1)
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test func onlyHexKeysNamePaths() {
        #expect(LockStore.isValidKey(key))
        #expect(!LockStore.isValidKey("../../etc/passwd"))
        #expect(!LockStore.isValidKey(String(repeating: "AB", count: 32)))
        #expect(!LockStore.isValidKey(String(repeating: "a", count: 63)))
    }
}
