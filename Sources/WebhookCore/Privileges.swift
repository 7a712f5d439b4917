// Run as the spool's owner. An administrator who types `webhook-worker retry
// --all` or `webhook-fcgi --check` as root must not leave root-owned files and
// directories in a spool the service user then cannot write; like Postfix's
// tools, which act as mail_owner, the programs become the spool's owner
// before they touch it.
import Glibc

/// When running as root and `spoolDir` exists and belongs to another user,
/// switches the process to that user and group (supplementary groups dropped).
public func becomeSpoolOwner(spoolDir: String) throws(SystemError) {
    guard geteuid() == 0 else { return }
    var st = stat()
    guard stat(spoolDir, &st) == 0, st.st_uid != 0 else { return }
    guard setgroups(0, nil) == 0 else { throw SystemError("setgroups", spoolDir, errno) }
    guard setgid(st.st_gid) == 0 else { throw SystemError("setgid", spoolDir, errno) }
    guard setuid(st.st_uid) == 0 else { throw SystemError("setuid", spoolDir, errno) }
    // setuid from root drops every capability; a way back would be a bug.
    guard setuid(0) != 0 else { throw SystemError("setuid", spoolDir, EPERM) }
}
