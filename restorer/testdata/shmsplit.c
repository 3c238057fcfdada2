// shmsplit: two tasks mapping disjoint halves of one shared anonymous
// object. The parent maps PAGES pages MAP_SHARED|MAP_ANONYMOUS and forks;
// the child unmaps the first half and stamps the second, the parent
// unmaps the second half and stamps the first: each page of the object is
// mapped by one task only. Every page is stamped with its index and the
// task's version.
//
// With LOWPID=N in the environment the parent writes N to ns_last_pid
// before the fork (in a PID namespace of the test's own), so the child's
// PID is below the parent's.
//
// The parent writes "ready PARENT CHILD" (its log is the last argument).
// SIGUSR2: each task bumps its version and stamps its half again; the
// child also removes (MADV_REMOVE) its last page, which must then read as
// zeros; the child writes "cbump". SIGUSR1: the child checks its half
// ("C ok" or "C bad ...") and exits; the parent reaps it, checks its own
// half ("P ok" or "P bad ...") and writes "done N" (N the child's status),
// exiting 0.
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096
#define PAGES 16

static volatile sig_atomic_t chk, bump;
static void onusr1(int s) { (void)s; chk = 1; }
static void onusr2(int s) { (void)s; bump = 1; }

static unsigned char *base;
static int lo, hi, logfd, ver = 1, removed = -1;
static char tag;

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

static uint64_t word(int p, int i) { return (uint64_t)p << 40 ^ (uint64_t)tag << 32 ^ (uint64_t)ver << 16 ^ (uint64_t)i; }

static void stamp(void) {
	for (int p = lo; p < hi; p++) {
		uint64_t *w = (uint64_t *)(base + (size_t)p * PG);
		for (int i = 0; i < PG / 8; i++)
			w[i] = word(p, i);
	}
}

// check returns the number of bad pages of the task's half.
static int check(void) {
	int bad = 0, first = -1;
	for (int p = lo; p < hi; p++) {
		const uint64_t *w = (const uint64_t *)(base + (size_t)p * PG);
		for (int i = 0; i < PG / 8; i++)
			if (w[i] != (p == removed ? 0 : word(p, i))) {
				if (first < 0)
					first = p;
				bad++;
				break;
			}
	}
	if (bad)
		say("%c bad %d pages, first %d (word 0 %lx)\n", tag, bad, first,
		    (unsigned long)((uint64_t *)(base + (size_t)first * PG))[0]);
	else
		say("%c ok\n", tag);
	return bad;
}

int main(int argc, char **argv) {
	if (argc < 2)
		return 2;
	logfd = open(argv[argc - 1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (logfd < 0)
		return 2;
	struct sigaction a = {.sa_handler = onusr1}, b = {.sa_handler = onusr2};
	sigaction(SIGUSR1, &a, NULL);
	sigaction(SIGUSR2, &b, NULL);
	base = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED)
		return 3;
	int pfd[2];
	if (pipe(pfd))
		return 3;
	const char *low = getenv("LOWPID");
	if (low) {
		int f = open("/proc/sys/kernel/ns_last_pid", O_WRONLY);
		if (f < 0 || write(f, low, strlen(low)) != (ssize_t)strlen(low))
			return 4;
		close(f);
	}
	pid_t kid = fork();
	if (kid < 0)
		return 5;
	if (kid == 0) {
		munmap(base, PAGES / 2 * PG);
		lo = PAGES / 2, hi = PAGES, tag = 'C';
		stamp();
		if (write(pfd[1], "x", 1) != 1)
			_exit(6);
		close(pfd[0]);
		close(pfd[1]);
		for (;;) {
			if (bump) {
				bump = 0;
				ver++;
				stamp();
				removed = hi - 1;
				if (madvise(base + (size_t)removed * PG, PG, MADV_REMOVE))
					_exit(7);
				say("cbump\n");
			}
			if (chk)
				_exit(check() ? 1 : 0);
			usleep(1000);
		}
	}
	char x;
	if (read(pfd[0], &x, 1) != 1)
		return 6;
	close(pfd[0]);
	close(pfd[1]);
	munmap(base + PAGES / 2 * PG, PAGES / 2 * PG);
	lo = 0, hi = PAGES / 2, tag = 'P';
	stamp();
	say("ready %d %d\n", (int)getpid(), (int)kid);
	for (;;) {
		if (bump) {
			bump = 0;
			ver++;
			stamp();
			kill(kid, SIGUSR2);
		}
		if (chk) {
			kill(kid, SIGUSR1);
			int st;
			if (waitpid(kid, &st, 0) != kid)
				return 8;
			int bad = check();
			say("done %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
			_exit(bad ? 1 : 0);
		}
		usleep(1000);
	}
}
