// mapghost: a MAP_SHARED mapping of a deleted file, shared by a parent and
// its child across checkpoint/restore. Started with its log path as the
// last argument, P makes LOG.map (one page), maps it shared, closes and
// unlinks it (keeping its fd open), and forks C. C counts in word 1 of the page every 10 ms; P
// writes "tick N" every 10 ms and, once C has counted, "ready C=PID
// ADDR=HEX". On SIGUSR1 P writes a token into word 2 and waits for C to
// answer token+1 in word 3 (C only sees it through the shared page),
// checks C's count still moves, stops C, and writes "shared ok" and exits
// 0 (1 with what was wrong).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

static void onusr1(int s) {
	(void)s;
	finish = 1;
}

int main(int argc, char **argv) {
	const char *log = argv[argc - 1];
	logfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		return 2;
	char path[4096];
	snprintf(path, sizeof path, "%s.map", log);
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (fd < 0 || ftruncate(fd, 4096))
		return 2;
	volatile uint64_t *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (w == MAP_FAILED)
		return 2;
	unlink(path); // fd stays open, in P and C: the same deleted file

	w[0] = 0x676f64776974; // written before the dump, read after
	signal(SIGUSR1, onusr1);
	pid_t c = fork();
	if (c < 0)
		return 2;
	if (c == 0) {
		for (;;) {
			w[1]++;
			if (w[2] && !w[3])
				w[3] = w[2] + 1;
			nap(10);
		}
	}
	while (w[1] < 3)
		nap(1);
	say("ready C=%d ADDR=%lx FD=%d\n", c, (unsigned long)w, fd);
	for (long n = 1; !finish; n++) {
		say("tick %ld\n", n);
		nap(10);
	}
	int bad = 0;
	if (w[0] != 0x676f64776974) {
		say("word 0 is %#lx\n", (unsigned long)w[0]);
		bad = 1;
	}
	w[2] = 0x5eed;
	for (int i = 0; i < 3000 && !w[3]; i++)
		nap(10);
	if (w[3] != 0x5eee) {
		say("C answered %#lx, want 0x5eee\n", (unsigned long)w[3]);
		bad = 1;
	}
	uint64_t n0 = w[1];
	for (int i = 0; i < 3000 && w[1] == n0; i++)
		nap(10);
	if (w[1] == n0) {
		say("C's count stopped at %lu\n", (unsigned long)n0);
		bad = 1;
	}
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	if (!bad)
		say("shared ok\n");
	return bad;
}
