// tree: a process tree for checkpoint/restore tests. Started as a session
// leader with its log path as the last argument, the root R builds:
//
//   R (session leader, child subreaper, ticks into LOG)
//   ├── A  (own process group)  ── A1 ── A2          three levels deep
//   ├── B  (setsid: own session) ── B1 (own group in B's session) ── B2 (joins B1's group)
//   ├── Z  (zombie: exited with status 7)
//   ├── K  (zombie: killed by SIGTERM)
//   ├── S  (stopped by SIGSTOP; writes "S continued" once continued)
//   ├── W  (writes through an fd shared with R by fork: one offset)
//   └── C  (clone with CLONE_FILES: R's fd table)
//
// R writes "ready PIDS..." once the tree stands, then "tick N" every 10
// ms. On SIGUSR1 it reaps Z and K, checks their statuses, writes
// "zombies ok" (or what was wrong), kills the rest and exits 0 (1 on a
// wrong status).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int logfd, shfd;
static volatile sig_atomic_t finish;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
	char b[512];
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

static void idle(void) {
	for (;;)
		pause();
}

static int cfn(void *arg) {
	(void)arg;
	idle();
	return 0;
}

// descendants counts pid's descendants (from /proc/PID/task/PID/children:
// every task here is single-threaded) and returns its first child in *first.
static int descendants(pid_t pid, pid_t *first) {
	char path[64], buf[4096];
	snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, pid);
	int fd = open(path, O_RDONLY), n = 0;
	if (fd < 0)
		return 0;
	ssize_t len = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (len <= 0)
		return 0;
	buf[len] = 0;
	char *p = buf, *end;
	for (long c; (c = strtol(p, &end, 10)) > 0; p = end) {
		if (first && !n)
			*first = c;
		n += 1 + descendants(c, NULL);
	}
	return n;
}

static pid_t pgid_of(pid_t pid) { return getpgid(pid); }

static void on_usr1(int s) {
	(void)s;
	finish = 1;
}

static pid_t child(void (*fn)(void)) {
	pid_t p = fork();
	if (p < 0) {
		perror("fork");
		exit(2);
	}
	if (p == 0) {
		prctl(PR_SET_PDEATHSIG, 0);
		fn();
		_exit(0);
	}
	return p;
}

static void a2(void) { idle(); }
static void a1(void) {
	child(a2);
	idle();
}
static void a(void) {
	setpgid(0, 0);
	child(a1);
	idle();
}

static void b2(void) { idle(); }
static pid_t b1pid;
static void b1(void) {
	setpgid(0, 0);
	idle();
}
static void b(void) {
	setsid();
	b1pid = child(b1);
	setpgid(b1pid, b1pid); // whichever runs first makes the group
	pid_t p = fork();
	if (p == 0) {
		setpgid(0, b1pid);
		b2();
	}
	idle();
}

static void z(void) { _exit(7); }
static void k(void) { idle(); }

static void s(void) {
	raise(SIGSTOP);
	say("S continued\n");
	idle();
}

static void w(void) {
	for (;;) {
		if (write(shfd, "W\n", 2) != 2)
			_exit(98);
		nap(10);
	}
}

int main(int argc, char **argv) {
	if (argc < 2) {
		fprintf(stderr, "usage: tree LOG\n");
		return 2;
	}
	const char *log = argv[argc - 1];
	logfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0644);
	char shpath[4096];
	snprintf(shpath, sizeof shpath, "%s.shared", log);
	shfd = open(shpath, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (logfd < 0 || shfd < 0) {
		perror("open");
		return 2;
	}
	if (prctl(PR_SET_CHILD_SUBREAPER, 1)) {
		perror("subreaper");
		return 2;
	}
	signal(SIGUSR1, on_usr1);
	pid_t pa = child(a), pb = child(b), pz = child(z), pk = child(k), ps = child(s), pw = child(w);
	static char stack[64 * 1024];
	pid_t pc = clone(cfn, stack + sizeof stack, CLONE_FILES | SIGCHLD, NULL);
	if (pc < 0) {
		perror("clone");
		return 2;
	}
	kill(pk, SIGTERM);
	// Wait until Z and K are zombies and S is stopped.
	for (int i = 0; i < 500; i++) {
		siginfo_t si;
		int n = 0;
		memset(&si, 0, sizeof si);
		if (!waitid(P_PID, pz, &si, WEXITED | WNOWAIT | WNOHANG) && si.si_pid == pz)
			n++;
		memset(&si, 0, sizeof si);
		if (!waitid(P_PID, pk, &si, WEXITED | WNOWAIT | WNOHANG) && si.si_pid == pk)
			n++;
		memset(&si, 0, sizeof si);
		if (!waitid(P_PID, ps, &si, WSTOPPED | WNOWAIT | WNOHANG) && si.si_pid == ps)
			n++;
		if (n == 3)
			break;
		nap(10);
	}
	// The grandchildren stand, in their groups.
	for (int i = 0; i < 1000; i++) {
		pid_t b1 = 0, dummy;
		if (descendants(getpid(), &dummy) == 11 && descendants(pb, &b1) == 2 && pgid_of(b1) == b1) {
			char path[64], buf[64];
			snprintf(path, sizeof path, "/proc/%d/task/%d/children", pb, pb);
			int fd = open(path, O_RDONLY);
			ssize_t len = read(fd, buf, sizeof buf - 1);
			close(fd);
			buf[len > 0 ? len : 0] = 0;
			char *e;
			strtol(buf, &e, 10);
			pid_t b2 = strtol(e, NULL, 10);
			if (b2 > 0 && pgid_of(b2) == b1)
				break;
		}
		nap(10);
	}
	say("ready A=%d B=%d Z=%d K=%d S=%d W=%d C=%d\n", pa, pb, pz, pk, ps, pw, pc);
	for (int n = 1; !finish; n++) {
		say("tick %d\n", n);
		if (write(shfd, "R\n", 2) != 2)
			return 98;
		nap(10);
	}
	int bad = 0, st;
	if (waitpid(pz, &st, 0) != pz || !WIFEXITED(st) || WEXITSTATUS(st) != 7) {
		say("zombie Z: status %#x\n", st);
		bad = 1;
	}
	if (waitpid(pk, &st, 0) != pk || !WIFSIGNALED(st) || WTERMSIG(st) != SIGTERM) {
		say("zombie K: status %#x\n", st);
		bad = 1;
	}
	if (!bad)
		say("zombies ok\n");
	kill(-pa, SIGKILL);
	kill(pa, SIGKILL);
	kill(pb, SIGKILL);
	kill(ps, SIGKILL);
	kill(pw, SIGKILL);
	kill(pc, SIGKILL);
	say("done\n");
	return bad;
}
