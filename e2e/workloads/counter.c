/*
 * counter: the C workload of godwit's end-to-end tests.
 *
 *   counter [-m MiB] [-t THREADS] [-b sleep|futex|spin] [-r FIFO] [-x CODE] [-p] LOG
 *
 * It fills MiB of anonymous memory with a pattern derived from its own
 * start, then ticks: each tick bumps a counter, appends "tick N" to LOG
 * (opened O_APPEND; stdout stays free for the harness) and writes N as a
 * 64-bit word at the current offset of LOG.seq (opened without O_APPEND,
 * so a restored file offset is checked: word i must hold i+1). With -t, THREADS
 * pthreads bump a shared counter under a mutex and their own counters; the
 * invariant shared == sum(own) must hold. On SIGUSR1 it verifies every page
 * of its memory, the invariant and LOG.seq's offset, writes "done ticks=N
 * sum=X" to LOG and exits CODE (default 0), or exits 3 naming what is wrong. SIGUSR2 is counted by a handler,
 * to prove handlers survive a restore.
 *
 * -b chooses where the main thread waits between ticks: nanosleep (default),
 * a futex wait with a timeout, or a busy loop. With -r, a thread opens the
 * named FIFO read-write and blocks in read(2) on it; each byte it gets is
 * logged as "read C", and "done" reports how many arrived. -p sets a
 * parent-death signal (SIGKILL), as programs under supervisors often do.
 * -z lays the memory out for the zero and duplicate page tests: its first
 * half is zeros (written: private pages, not the shared zero page), its
 * third quarter pages all hold the contents of the last quarter's first
 * page; the check verifies that layout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t finish, usr2;
static uint64_t *mem;
static size_t words;
static uint64_t seed;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t shared_count;
static uint64_t *own;
static int nthreads;
static int futex_word;
static int fifo = -1, logfd;
static volatile int reads;

static void *reader(void *arg)
{
	(void)arg;
	for (;;) {
		char c;
		ssize_t n = read(fifo, &c, 1);
		if (n == 1) {
			reads++;
			dprintf(logfd, "read %c\n", c);
		} else if (n < 0 && errno != EINTR) {
			dprintf(logfd, "BAD read: %s\n", strerror(errno));
			return NULL;
		}
	}
}

static int zlayout;

static uint64_t fill(size_t i) { return (i * 0x9E3779B97F4A7C15ull) ^ seed; }

/* pattern is word i's expected value (see -z). */
static uint64_t pattern(size_t i)
{
	if (!zlayout)
		return fill(i);
	size_t wpp = 4096 / sizeof(uint64_t), pages = words / wpp, p = i / wpp;
	if (p < pages / 2)
		return 0;
	if (p < pages / 4 * 3)
		return fill(pages / 4 * 3 * wpp + i % wpp);
	return fill(i);
}

static void on_usr1(int s) { (void)s; finish = 1; }
static void on_usr2(int s) { (void)s; usr2++; }

static void *worker(void *arg)
{
	long id = (long)arg;
	while (!finish) {
		pthread_mutex_lock(&lock);
		shared_count++;
		own[id]++;
		pthread_mutex_unlock(&lock);
		struct timespec ts = {0, 200000};
		nanosleep(&ts, NULL);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	size_t mib = 1;
	const char *block = "sleep";
	int code = 0;
	int c;
	const char *fifopath = NULL;
	while ((c = getopt(argc, argv, "m:t:b:x:r:pz")) != -1) {
		switch (c) {
		case 'm': mib = strtoul(optarg, NULL, 0); break;
		case 't': nthreads = atoi(optarg); break;
		case 'b': block = optarg; break;
		case 'x': code = atoi(optarg); break;
		case 'r': fifopath = optarg; break;
		case 'p': prctl(PR_SET_PDEATHSIG, SIGKILL); break;
		case 'z': zlayout = 1; break;
		default: return 2;
		}
	}
	if (optind != argc - 1)
		return 2;
	int log = open(argv[optind], O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (log < 0)
		return 2;
	logfd = log;
	char seqname[4096];
	snprintf(seqname, sizeof(seqname), "%s.seq", argv[optind]);
	int seq = open(seqname, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (seq < 0)
		return 2;

	struct sigaction sa = {0};
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);

	seed = (uint64_t)getpid() * 2654435761u;
	words = mib * (1 << 20) / sizeof(uint64_t);
	mem = mmap(NULL, words * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 2;
	for (size_t i = 0; i < words; i++)
		mem[i] = fill(i);
	for (size_t i = 0; zlayout && i < words; i++)
		mem[i] = pattern(i);

	own = calloc(nthreads + 1, sizeof(*own));
	pthread_t *tids = calloc(nthreads + 1, sizeof(*tids));
	for (long i = 0; i < nthreads; i++)
		pthread_create(&tids[i], NULL, worker, (void *)i);

	if (fifopath) {
		fifo = open(fifopath, O_RDWR);
		pthread_t rt;
		if (fifo < 0 || pthread_create(&rt, NULL, reader, NULL) != 0)
			return 2;
	}
	dprintf(log, "ready pid=%d\n", getpid());
	uint64_t ticks = 0;
	while (!finish) {
		ticks++;
		dprintf(log, "tick %llu\n", (unsigned long long)ticks);
		if (write(seq, &ticks, sizeof(ticks)) != sizeof(ticks)) {
			dprintf(log, "BAD write to %s: %s\n", seqname, strerror(errno));
			return 3;
		}
		if (strcmp(block, "futex") == 0) {
			struct timespec ts = {0, 10000000};
			syscall(SYS_futex, &futex_word, FUTEX_WAIT, 0, &ts, NULL, 0);
		} else if (strcmp(block, "spin") == 0) {
			for (volatile long i = 0; i < 3000000 && !finish; i++)
				;
		} else {
			struct timespec ts = {0, 10000000};
			nanosleep(&ts, NULL);
		}
	}
	for (long i = 0; i < nthreads; i++)
		pthread_join(tids[i], NULL);

	for (size_t i = 0; i < words; i++) {
		if (mem[i] != pattern(i)) {
			dprintf(log, "BAD memory word %zu: %llx != %llx\n", i,
				(unsigned long long)mem[i], (unsigned long long)pattern(i));
			return 3;
		}
	}
	uint64_t sum = 0;
	for (int i = 0; i < nthreads; i++)
		sum += own[i];
	if (sum != shared_count) {
		dprintf(log, "BAD threads: shared %llu != sum %llu\n",
			(unsigned long long)shared_count, (unsigned long long)sum);
		return 3;
	}
	off_t pos = lseek(seq, 0, SEEK_CUR);
	if (pos != (off_t)(ticks * sizeof(ticks))) {
		dprintf(log, "BAD offset of %s: %lld, want %llu\n", seqname, (long long)pos,
			(unsigned long long)(ticks * sizeof(ticks)));
		return 3;
	}
	dprintf(log, "done ticks=%llu sum=%llu usr2=%d reads=%d\n", (unsigned long long)ticks,
		(unsigned long long)sum, (int)usr2, reads);
	return code;
}
