// treeshare: a tree of three processes for the overlapped restore of
// trees. Started with its log path as the last argument, the root maps
// PRIV_PAGES of private memory (inherited copy-on-write) and SHM_PAGES of
// shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS), then forks two
// children. Every task keeps rewriting random pages of its copy of the
// private memory and of its own slice of the shared memory, each page
// stamped with its index and a version the task keeps per page in its
// private memory (the task's number in the version's top bits), so each
// task can check every page it owns.
//
// The root writes "ready ROOT CHILD1 CHILD2", then "tick N" every ~10 ms.
// On SIGUSR1 the root checks its memory ("ok 0 PAGES" or "bad 0 ..."),
// posts a nonce in the shared mailbox page; each child, seeing it, checks
// its own memory ("ok K PAGES" or "bad K ...") and answers in the mailbox,
// which the root reads back: "shared ok NONCE" when both answers came
// through the shared page, else "shared bad". Then the root kills and reaps
// its children, writes "done N" and exits 0. On SIGUSR2 the root removes
// its slice of the shared memory (MADV_REMOVE: those pages read as zero
// until written again) and writes "removed".
//
// With "split" as the first argument every task unmaps the other tasks'
// slices before "ready": each page of the object but the mailbox is then
// mapped by one task only.
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
#define PRIV_PAGES 2048
#define SLICE 64 // shared pages per task
#define TASKS 3
#define SHM_PAGES (TASKS * SLICE + 1) // the last is the mailbox

static int logfd;
static unsigned char *priv, *shm;
static uint64_t *ver, *sver; // private: each task's versions of its pages
static volatile uint64_t *mbox;
static volatile sig_atomic_t check, drop;

// ZERO is the version of a page that must read as zeros.
#define ZERO UINT64_MAX

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

static void stamp(unsigned char *p, uint64_t idx, uint64_t v) {
	uint64_t *w = (uint64_t *)p;
	for (int i = 0; i < PAGE / 8; i++)
		w[i] = idx << 40 ^ v << 8 ^ (uint64_t)i;
}

static int same(const unsigned char *p, uint64_t idx, uint64_t v) {
	const uint64_t *w = (const uint64_t *)p;
	for (int i = 0; i < PAGE / 8; i++)
		if (w[i] != (v == ZERO ? 0 : idx << 40 ^ v << 8 ^ (uint64_t)i))
			return 0;
	return 1;
}

// verify checks task k's private memory and its slice of the shared one.
static int verify(int k) {
	for (uint64_t i = 0; i < PRIV_PAGES; i++)
		if (!same(priv + i * PAGE, i, ver[i])) {
			say("bad %d private page %lu (version %lx, word 0 %lx)\n", k, (unsigned long)i,
			    (unsigned long)ver[i], (unsigned long)((uint64_t *)(priv + i * PAGE))[0]);
			return 0;
		}
	for (uint64_t i = 0; i < SLICE; i++) {
		uint64_t idx = (uint64_t)k * SLICE + i;
		if (!same(shm + idx * PAGE, idx, sver[i])) {
			say("bad %d shared page %lu (version %lx, word 0 %lx)\n", k, (unsigned long)idx,
			    (unsigned long)sver[i], (unsigned long)((uint64_t *)(shm + idx * PAGE))[0]);
			return 0;
		}
	}
	say("ok %d %d\n", k, PRIV_PAGES + SLICE);
	return 1;
}

static void onusr1(int s) {
	(void)s;
	check = 1;
}

static void onusr2(int s) {
	(void)s;
	drop = 1;
}

static void finish(pid_t *kids) {
	uint64_t nonce = (uint64_t)time(NULL) << 20 ^ (uint64_t)getpid() ^ 0x5a5a;
	verify(0);
	__atomic_store_n(&mbox[0], nonce, __ATOMIC_SEQ_CST);
	int shared = 0;
	for (int i = 0; i < 5000 && !shared; i++) {
		shared = __atomic_load_n(&mbox[1], __ATOMIC_SEQ_CST) == nonce &&
			 __atomic_load_n(&mbox[2], __ATOMIC_SEQ_CST) == nonce;
		if (!shared)
			nap(1000);
	}
	if (shared)
		say("shared ok %lx\n", (unsigned long)nonce);
	else
		say("shared bad %lx %lx %lx\n", (unsigned long)nonce, (unsigned long)mbox[1], (unsigned long)mbox[2]);
	for (int i = 0; i < TASKS - 1; i++) {
		kill(kids[i], SIGKILL);
		waitpid(kids[i], NULL, 0);
	}
	say("done %d\n", shared);
	_exit(0);
}

static void work(int k, pid_t *kids) {
	uint64_t n = 0, x = (uint64_t)k * 2654435761u + 1, seen = 0;
	for (;;) {
		for (int i = 0; i < 4; i++) {
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
			uint64_t idx = (x >> 33) % PRIV_PAGES;
			ver[idx] = (uint64_t)k << 28 | ++n;
			stamp(priv + idx * PAGE, idx, ver[idx]);
		}
		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		uint64_t i = (x >> 33) % SLICE;
		sver[i] = (uint64_t)k << 28 | ++n;
		stamp(shm + ((uint64_t)k * SLICE + i) * PAGE, (uint64_t)k * SLICE + i, sver[i]);
		if (k == 0) {
			if (n % 50 == 0)
				say("tick %lu\n", (unsigned long)(n / 50));
			if (check)
				finish(kids);
			if (drop) {
				drop = 0;
				if (madvise(shm, SLICE * PAGE, MADV_REMOVE))
					say("bad madvise %d\n", errno);
				for (int j = 0; j < SLICE; j++)
					sver[j] = ZERO;
				say("removed\n");
			}
		} else {
			uint64_t m = __atomic_load_n(&mbox[0], __ATOMIC_SEQ_CST);
			if (m != seen) {
				seen = m;
				verify(k);
				__atomic_store_n(&mbox[k], m, __ATOMIC_SEQ_CST);
			}
		}
		nap(1000);
	}
}

// unsplit unmaps the slices of the shared memory that are not task k's.
static void unsplit(int k) {
	for (int j = 0; j < TASKS; j++)
		if (j != k && munmap(shm + (size_t)j * SLICE * PAGE, SLICE * PAGE))
			_exit(6);
}

int main(int argc, char **argv) {
	if (argc < 2)
		return 2;
	logfd = open(argv[argc - 1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (logfd < 0)
		return 2;
	priv = mmap(NULL, PRIV_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ver = mmap(NULL, (PRIV_PAGES + SLICE) * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	shm = mmap(NULL, SHM_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (priv == MAP_FAILED || ver == MAP_FAILED || shm == MAP_FAILED)
		return 3;
	sver = ver + PRIV_PAGES;
	mbox = (volatile uint64_t *)(shm + (SHM_PAGES - 1) * PAGE);
	for (uint64_t i = 0; i < PRIV_PAGES; i++)
		stamp(priv + i * PAGE, i, 0);
	for (uint64_t i = 0; i < TASKS * SLICE; i++)
		stamp(shm + i * PAGE, i, 0);
	struct sigaction sa = {.sa_handler = onusr1};
	sigaction(SIGUSR1, &sa, NULL);
	struct sigaction sb = {.sa_handler = onusr2};
	sigaction(SIGUSR2, &sb, NULL);
	int split = argc > 2 && strcmp(argv[1], "split") == 0;
	int sync[2];
	if (pipe(sync))
		return 3;
	pid_t kids[TASKS - 1];
	for (int k = 1; k < TASKS; k++) {
		pid_t p = fork();
		if (p < 0)
			return 4;
		if (p == 0) {
			signal(SIGUSR1, SIG_IGN);
			signal(SIGUSR2, SIG_IGN);
			if (split)
				unsplit(k);
			if (write(sync[1], "x", 1) != 1)
				_exit(5);
			close(sync[0]);
			close(sync[1]);
			work(k, NULL);
		}
		kids[k - 1] = p;
	}
	for (int k = 1; k < TASKS; k++) {
		char x;
		if (read(sync[0], &x, 1) != 1)
			return 5;
	}
	close(sync[0]);
	close(sync[1]);
	if (split)
		unsplit(0);
	say("ready %d %d %d\n", (int)getpid(), (int)kids[0], (int)kids[1]);
	work(0, kids);
}
