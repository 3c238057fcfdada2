// stopsig: job-control stops across checkpoint/restore. Started as a
// session leader with its log path as the last argument, the root P forks
// T and I, each in its own process group (not orphaned: P is in the same
// session, in another group), stopped by SIGTSTP and SIGTTIN. P does not
// wait for them before the dump, so their stop reports are still pending.
// It writes "ready T=.. I=.." once both are stopped, then "tick N" every 10 ms. On
// SIGUSR1 it checks that waitpid(WUNTRACED) reports each child stopped by
// its own signal ("stops ok", or what was wrong), continues them with
// SIGCONT, checks they ran on and exited 0 ("continued ok") and exits 0
// (1 on anything wrong).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int logfd;
static volatile sig_atomic_t finish;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
	char b[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b, sizeof b, fmt, ap);
	va_end(ap);
	if (write(logfd, b, n) != n)
		_exit(99);
}

static void nap(long ms) {
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

// state returns the state letter of pid from /proc/PID/stat.
static char state(pid_t pid) {
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	return p && p[1] && p[2] ? p[2] : 0;
}

static pid_t stopper(int sig, const char *name) {
	pid_t c = fork();
	if (c < 0)
		_exit(2);
	if (c == 0) {
		if (setpgid(0, 0))
			_exit(3);
		raise(sig);
		say("%s continued\n", name);
		_exit(0);
	}
	return c;
}

static void onusr1(int s) {
	(void)s;
	finish = 1;
}

int main(int argc, char **argv) {
	logfd = open(argv[argc - 1], O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		return 2;
	signal(SIGUSR1, onusr1);
	pid_t t = stopper(SIGTSTP, "T"), i = stopper(SIGTTIN, "I");
	while (state(t) != 'T' || state(i) != 'T')
		nap(1);
	say("ready T=%d I=%d\n", t, i);
	for (long n = 1; !finish; n++) {
		say("tick %ld\n", n);
		nap(10);
	}

	int bad = 0;
	struct {
		pid_t pid;
		int sig;
	} want[] = {{t, SIGTSTP}, {i, SIGTTIN}};
	for (int k = 0; k < 2; k++) {
		int st;
		pid_t r = waitpid(want[k].pid, &st, WUNTRACED);
		if (r != want[k].pid || !WIFSTOPPED(st) || WSTOPSIG(st) != want[k].sig) {
			say("child %d: waitpid %d status %#x, want stopped by %d\n", want[k].pid, r, st, want[k].sig);
			bad = 1;
		}
	}
	if (!bad)
		say("stops ok\n");
	kill(t, SIGCONT);
	kill(i, SIGCONT);
	for (int k = 0; k < 2; k++) {
		int st;
		pid_t r = waitpid(want[k].pid, &st, 0);
		if (r != want[k].pid || !WIFEXITED(st) || WEXITSTATUS(st)) {
			say("child %d: waitpid %d status %#x, want exit 0\n", want[k].pid, r, st);
			bad = 1;
		}
	}
	if (!bad)
		say("continued ok\n");
	return bad;
}
