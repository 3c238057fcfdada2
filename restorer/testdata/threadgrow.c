/* threadgrow: a program whose threads appear between pre-copy rounds.
 * argv: LOG. It fills 4 MiB with a pattern, writes "ready", then "tick N"
 * every 10 ms. On SIGUSR2 it starts one more thread (at most 8) and writes
 * "thread K"; each thread bumps its own counter and, under a mutex, a
 * shared total (total == sum of the counters) every millisecond. On
 * SIGUSR1 it checks the pattern, the invariant and that every thread still
 * runs (its counter moves), writes "done threads=K sum=X" and exits 0, or
 * writes "bad ..." and exits 3. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM (4 << 20)
#define MAXT 8

static volatile sig_atomic_t finish, grow;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t total, own[MAXT];
static int nthreads;
static FILE *logf;

static void nap(long ns) {
	struct timespec ts = {0, ns};
	nanosleep(&ts, NULL);
}

static void *worker(void *arg) {
	int k = (int)(intptr_t)arg;
	for (;;) {
		pthread_mutex_lock(&mu);
		own[k]++;
		total++;
		pthread_mutex_unlock(&mu);
		nap(1000000);
	}
	return NULL;
}

static void on1(int s) { (void)s; finish = 1; }
static void on2(int s) { (void)s; grow = 1; }

static int bad(const char *what, long a, long b) {
	fprintf(logf, "bad %s %ld %ld\n", what, a, b);
	return 3;
}

int main(int argc, char **argv) {
	if (argc != 2 || !(logf = fopen(argv[1], "a")))
		return 2;
	setvbuf(logf, NULL, _IONBF, 0);
	uint64_t *mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 2;
	for (size_t i = 0; i < MEM / 8; i++)
		mem[i] = i * 0x9e3779b97f4a7c15ULL;
	signal(SIGUSR1, on1);
	signal(SIGUSR2, on2);
	fprintf(logf, "ready\n");
	for (long n = 1;; n++) {
		if (grow && nthreads < MAXT) {
			grow = 0;
			pthread_t t;
			if (pthread_create(&t, NULL, worker, (void *)(intptr_t)nthreads))
				return bad("pthread_create", nthreads, 0);
			fprintf(logf, "thread %d\n", ++nthreads);
		}
		if (finish) {
			for (size_t i = 0; i < MEM / 8; i++)
				if (mem[i] != i * 0x9e3779b97f4a7c15ULL)
					return bad("memory word", (long)i, 0);
			uint64_t before[MAXT];
			pthread_mutex_lock(&mu);
			memcpy(before, own, sizeof own);
			uint64_t sum = 0;
			for (int k = 0; k < nthreads; k++)
				sum += own[k];
			if (sum != total)
				return bad("invariant", (long)sum, (long)total);
			pthread_mutex_unlock(&mu);
			for (int k = 0; k < nthreads; k++) {
				int moved = 0;
				for (int i = 0; i < 2000 && !moved; i++) {
					pthread_mutex_lock(&mu);
					moved = own[k] != before[k];
					pthread_mutex_unlock(&mu);
					nap(1000000);
				}
				if (!moved)
					return bad("thread stopped", k, (long)before[k]);
			}
			fprintf(logf, "done threads=%d sum=%lu\n", nthreads, (unsigned long)sum);
			return 0;
		}
		fprintf(logf, "tick %ld\n", n);
		nap(10000000);
	}
}
