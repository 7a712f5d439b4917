// Linux calls Swift cannot reach directly (variadic or GNU-only), wrapped in
// static inline functions that the Swift importer compiles.
#ifndef CSYSTEM_SHIM_H
#define CSYSTEM_SHIM_H
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/vfs.h>
#include <unistd.h>

// Starts `path` as the leader of a new process group, with
// `stdin_fd` and `stderr_fd` as its fds 0 and 2, the default signal mask and
// dispositions, and SIGKILL sent to it should the calling thread die first.
// Only async-signal-safe calls that touch no shared memory run between vfork
// and exec, so this is safe in a multithreaded process. Returns the child's pid, or -1 with errno set.
static inline pid_t iw_spawn(const char *path, char *const argv[], char *const envp[], int stdin_fd, int stderr_fd) {
    pid_t parent = getpid();
    // vfork: no copy of the parent's page tables, and the parent resumes once
    // the child has called execve, so a busy worker spawns cheaply.
    pid_t pid = vfork();
    if (pid != 0) return pid;
    setpgid(0, 0);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(127);
    struct sigaction dfl;
    dfl.sa_handler = SIG_DFL;
    dfl.sa_flags = 0;
    sigemptyset(&dfl.sa_mask);
    for (int s = 1; s < 32; s++) {
        if (s != SIGKILL && s != SIGSTOP) sigaction(s, &dfl, 0);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, 0);
    if (dup2(stdin_fd, 0) < 0 || dup2(stderr_fd, 2) < 0) _exit(127);
    execve(path, argv, envp);
    _exit(127);
}

// syncfs(2): flushes the whole file system holding `fd`; since Linux 5.8 it
// reports writeback errors that happened since the last call on `fd`.
static inline int iw_syncfs(int fd) {
    return (int)syscall(SYS_syncfs, fd);
}

// The file system type (statfs f_type) of `path`, or 0 when it cannot be read.
static inline long iw_fs_type(const char *path) {
    struct statfs st;
    return statfs(path, &st) == 0 ? (long)st.f_type : 0;
}

// pidfd_open(2): a descriptor that becomes readable when `pid` exits.
static inline int iw_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

// Starts a watchdog process that outlives the caller for one purpose: when
// the returned pipe's write end closes (the caller exited or was killed, even
// with SIGKILL), it kills every process group announced on the pipe as
// "+PGID\n" and not withdrawn as "-PGID\n", then exits. It runs in its own
// process group, ignores the usual stop signals and keeps no other descriptor.
// Returns the write end (close-on-exec) and the watchdog's pid in *pid_out.
static inline int iw_start_watchdog(pid_t *pid_out) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        struct sigaction ign;
        ign.sa_handler = SIG_IGN;
        ign.sa_flags = 0;
        sigemptyset(&ign.sa_mask);
        sigaction(SIGINT, &ign, 0);
        sigaction(SIGTERM, &ign, 0);
        sigaction(SIGHUP, &ign, 0);
        sigaction(SIGQUIT, &ign, 0);
        sigaction(SIGPIPE, &ign, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, 0);
        if (dup2(fds[0], 0) < 0) _exit(1);
        if (syscall(SYS_close_range, 1U, ~0U, 0) != 0) {
            for (int fd = 1; fd < 65536; fd++) close(fd);
        }
        static pid_t groups[4096];
        int count = 0;
        long value = 0;
        char sign = 0;
        char buffer[512];
        for (;;) {
            ssize_t got = read(0, buffer, sizeof buffer);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) break;
            for (ssize_t i = 0; i < got; i++) {
                char c = buffer[i];
                if (c == '+' || c == '-') {
                    sign = c;
                    value = 0;
                } else if (c >= '0' && c <= '9') {
                    value = value * 10 + (c - '0');
                } else if (c == '\n') {
                    if (sign == '+' && count < 4096) {
                        groups[count++] = (pid_t)value;
                    } else if (sign == '-') {
                        for (int k = 0; k < count; k++) {
                            if (groups[k] == (pid_t)value) {
                                groups[k] = groups[--count];
                                break;
                            }
                        }
                    }
                    sign = 0;
                    value = 0;
                }
            }
        }
        for (int k = 0; k < count; k++) {
            if (groups[k] > 1) kill(-groups[k], SIGKILL);
        }
        _exit(0);
    }
    close(fds[0]);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    *pid_out = pid;
    return fds[1];
}

#endif
