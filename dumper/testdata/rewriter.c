/* rewriter: memory that changes between pre-dump rounds.
 *
 *   rewriter NPAGES RATE LOG
 *
 * Region A has NPAGES pages, page i filled with (i & 0xff) and stamped
 * with i. A writer thread rewrites RATE pages a second (0: none) at
 * pseudo-random places. SIGUSR1 runs the next step (logged "step G done"):
 *   every step g writes the pages i of A with i % 10 == g % 10;
 *   step 2 also maps region B (8 pages, written);
 *   step 3 also zaps pages 1..4 of A (MADV_DONTNEED: they read as zero),
 *          moves B elsewhere (mremap) and grows it to 16 pages (written);
 *   step 4 also unmaps the last 8 pages of B.
 * SIGUSR2 stops the writer and logs "hash H" over A and B.
 * SIGTERM exits. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PG 4096

static char *A, *B;
static size_t na, nb;
static volatile sig_atomic_t want_step, want_hash, stop_writer;
static int gen;
static FILE *logf;
static long rate;

static void on_usr1(int s) { (void)s; want_step = 1; }
static void on_usr2(int s) { (void)s; want_hash = 1; }

static void stamp(char *p, size_t i, int g)
{
	memset(p, (int)((i + g) & 0xff), PG);
	memcpy(p, &i, sizeof i);
	memcpy(p + 8, &g, sizeof g);
}

static void *writer(void *arg)
{
	(void)arg;
	uint64_t x = 88172645463325252ull, count = 0;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (!stop_writer) {
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		double el = (now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9;
		while (!stop_writer && count < (uint64_t)(el * rate)) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			size_t i = x % na;
			if (i >= 1 && i <= 4)
				continue; /* the zapped pages stay zero */
			stamp(A + i * PG, i, 1000 + (int)(count & 0xffff));
			count++;
		}
		usleep(1000);
	}
	return NULL;
}

static uint64_t hash(const char *p, size_t n, uint64_t h)
{
	for (size_t k = 0; k < n; k++)
		h = (h ^ (unsigned char)p[k]) * 1099511628211ull;
	return h;
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	na = strtoul(argv[1], NULL, 0);
	rate = strtol(argv[2], NULL, 0);
	logf = fopen(argv[3], "a");
	if (!logf)
		return 2;
	setvbuf(logf, NULL, _IONBF, 0);
	A = mmap(NULL, na * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (A == MAP_FAILED)
		return 2;
	for (size_t i = 0; i < na; i++)
		stamp(A + i * PG, i, 0);
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	pthread_t th;
	if (rate > 0 && pthread_create(&th, NULL, writer, NULL))
		return 2;
	fprintf(logf, "ready pid=%d A=%p\n", getpid(), (void *)A);
	for (;;) {
		if (want_step) {
			want_step = 0;
			gen++;
			for (size_t i = gen % 10; i < na; i += 10)
				if (i < 1 || i > 4 || gen < 3)
					stamp(A + i * PG, i, gen);
			if (gen == 2) {
				nb = 8;
				B = mmap(NULL, nb * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
				for (size_t i = 0; i < nb; i++)
					stamp(B + i * PG, i, 77);
			}
			if (gen == 3) {
				madvise(A + PG, 4 * PG, MADV_DONTNEED);
				/* Reserve a new place, then move and grow B there. */
				char *dst = mmap(NULL, 32 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
				munmap(dst + 16 * PG, 16 * PG);
				B = mremap(B, nb * PG, 16 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
				if (B == MAP_FAILED)
					return 3;
				for (size_t i = nb; i < 16; i++)
					stamp(B + i * PG, i, 78);
				nb = 16;
			}
			if (gen == 4) {
				munmap(B + 8 * PG, 8 * PG);
				nb = 8;
			}
			fprintf(logf, "step %d done B=%p nb=%zu\n", gen, (void *)B, nb);
		}
		if (want_hash) {
			want_hash = 0;
			if (rate > 0 && !stop_writer) {
				stop_writer = 1;
				pthread_join(th, NULL);
			}
			uint64_t h = hash(A, na * PG, 1469598103934665603ull);
			if (B)
				h = hash(B, nb * PG, h);
			fprintf(logf, "hash %016llx\n", (unsigned long long)h);
		}
		usleep(2000);
	}
}
