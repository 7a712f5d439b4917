// Linux calls Swift cannot reach directly (variadic or GNU-only), wrapped in
// static inline functions that the Swift importer compiles.
#ifndef CSYSTEM_SHIM_H
#define CSYSTEM_SHIM_H
#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

// Forks and executes `path` as the leader of a new process group, with
// `stdin_fd` and `stderr_fd` as its fds 0 and 2, the default signal mask and
// dispositions, and SIGKILL sent to it should the calling thread die first.
// Only async-signal-safe calls run between fork and exec, so this is safe in
// a multithreaded process. Returns the child's pid, or -1 with errno set.
static inline pid_t iw_spawn(const char *path, char *const argv[], char *const envp[], int stdin_fd, int stderr_fd) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0) {
        if (pid > 0) setpgid(pid, pid);
        return pid;
    }
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

// pidfd_open(2): a descriptor that becomes readable when `pid` exits.
static inline int iw_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

#endif
