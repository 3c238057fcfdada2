// treemem: a tree whose every task keeps writing memory, for pre-dump
// tests of trees. Started with its log path as the last argument, the root
// maps PRIV_PAGES of private memory (inherited copy-on-write) and
// SHM_PAGES of shared anonymous memory, then forks two children; the first
// forks a grandchild. Every task rewrites pages of its copy of the private
// memory and of its own slice of the shared memory all the time, each page
// stamped with the task's number and a counter.
//
// The root writes "ready PRIV SHM PIDS..." (addresses in hex, then the
// pids) once the tree stands, then "tick N" every 10 ms. On SIGUSR2 it
// forks one more child that writes like the others ("child PID"). On
// SIGHUP a task forks a child that writes 8 pages of shared memory (slice
// 7, no other task's) and exits at once ("ephemeral done"). Every task
// reaps its exited children.
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

#define PAGE 4096
#define PRIV_PAGES 1024
#define SHM_PAGES 512
#define SLICE 32 // shared pages per task number

static int logfd;
static unsigned char *priv, *shm;
static volatile sig_atomic_t more, eph;

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

static void nap(long us) {
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static void stamp(unsigned char *p, uint64_t who, uint64_t n) {
	uint64_t *w = (uint64_t *)p;
	for (int i = 0; i < PAGE / 8; i++)
		w[i] = who << 56 | n << 12 | (uint64_t)i;
}

// work writes a few pages now and then; the root also ticks.
static void work(int k, int root) {
	uint64_t n = 0, x = (uint64_t)k * 2654435761u + 1;
	for (;;) {
		for (int i = 0; i < 4; i++) {
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
			stamp(priv + (x >> 33) % PRIV_PAGES * PAGE, k, ++n);
		}
		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		stamp(shm + ((size_t)(k % (SHM_PAGES / SLICE)) * SLICE + (x >> 33) % SLICE) * PAGE, k, ++n);
		if (eph) {
			eph = 0;
			pid_t p = fork();
			if (p == 0) {
				for (int i = 0; i < 8; i++)
					stamp(shm + (size_t)(7 * SLICE + i) * PAGE, 7, n + 1000000);
				_exit(0);
			}
			if (p > 0 && waitpid(p, NULL, 0) == p)
				say("ephemeral done\n");
		}
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		if (root) {
			if (n % 20 == 0)
				say("tick %llu\n", (unsigned long long)(n / 20));
			if (more) {
				more = 0;
				static int next = 10;
				int c = next++;
				pid_t p = fork();
				if (p == 0)
					work(c, 0);
				say("child %d\n", (int)p);
			}
		}
		nap(2000);
	}
}

static void onusr2(int s) {
	(void)s;
	more = 1;
}

static void onhup(int s) {
	(void)s;
	eph = 1;
}

int main(int argc, char **argv) {
	if (argc < 2)
		return 2;
	logfd = open(argv[argc - 1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (logfd < 0)
		return 2;
	priv = mmap(NULL, PRIV_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	shm = mmap(NULL, SHM_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (priv == MAP_FAILED || shm == MAP_FAILED)
		return 3;
	for (int i = 0; i < PRIV_PAGES; i++)
		stamp(priv + (size_t)i * PAGE, 0, i);
	for (int i = 0; i < SHM_PAGES; i++)
		stamp(shm + (size_t)i * PAGE, 0, i);
	struct sigaction sa = {.sa_handler = onusr2};
	sigaction(SIGUSR2, &sa, NULL);
	struct sigaction sh = {.sa_handler = onhup};
	sigaction(SIGHUP, &sh, NULL);
	pid_t a = fork();
	if (a == 0) {
		pid_t g = fork();
		if (g == 0)
			work(3, 0);
		char b[64];
		int n = snprintf(b, sizeof b, "%d\n", (int)g);
		// The grandchild's pid goes to the root through the log.
		say("grandchild %.*s", n, b);
		work(1, 0);
	}
	pid_t b = fork();
	if (b == 0)
		work(2, 0);
	nap(100000);
	say("ready %lx %lx %d %d %d\n", (unsigned long)priv, (unsigned long)shm, (int)getpid(), (int)a, (int)b);
	work(0, 1);
}
