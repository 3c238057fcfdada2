/* lazy: a workload for lazy restore. It fills a private anonymous region
 * with a known pattern (some pages never touched), says "ready", and waits
 * for the file argv[2]. Then, while its pages are still coming, it writes,
 * mremaps, madvises(DONTNEED), munmaps and (with argv[4] = "fork") forks a
 * child that checks its own copy, and finally checks every page it still
 * has: "done ok" on success, "bad ..." naming the first wrong page.
 * usage: lazy LOG GOFILE MIB [fork|bench|bare]
 *
 * bench: once restored, it logs "running NS" (CLOCK_REALTIME) at once, then
 * touches 2000 pages in random 64 KiB blocks that mincore reports missing,
 * timing each first touch ("lat P50 P99 N" in ns), then checks every page.
 * bare: the floor for bench: it registers a fresh region of the same size
 * with a userfaultfd of its own, logs "uffd FD ADDR", and on GOFILE does
 * the same timed touches, which the test serves with a bare loop. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PG 4096UL
#define WORDS (PG / 8)

static FILE *logf;

static uint64_t pat(size_t page, size_t w) { return (page * 0x9E3779B97F4A7C15ULL) ^ (w + 1) ^ 0x5a5a; }
static size_t holemod = 7; /* bench: rare holes, as in a program whose memory is mostly data */
static int hole(size_t page) { return page % holemod == 3; }

static void fill(char *base, size_t n)
{
	for (size_t p = 0; p < n; p++) {
		if (hole(p))
			continue;
		uint64_t *q = (uint64_t *)(base + p * PG);
		for (size_t w = 0; w < WORDS; w++)
			q[w] = pat(p, w);
	}
}

/* check n pages at at, which hold the pattern of pages orig.. (zero: all zero) */
static int check(const char *what, char *at, size_t orig, size_t n, int zero)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t *q = (uint64_t *)(at + i * PG);
		for (size_t w = 0; w < WORDS; w++) {
			uint64_t want = (zero || hole(orig + i)) ? 0 : pat(orig + i, w);
			if (q[w] != want) {
				fprintf(logf, "bad %s page %zu (at %p) word %zu: %#llx want %#llx\n", what, orig + i,
					(void *)(at + i * PG), w, (unsigned long long)q[w], (unsigned long long)want);
				return -1;
			}
		}
	}
	return 0;
}

static uint64_t now_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int cmp64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* touch times first touches of missing pages, one per random 64 KiB block */
static void touch(char *r, size_t n)
{
	enum { SAMPLES = 2000 };
	static uint64_t lat[SAMPLES];
	size_t blocks = n / 16, k = 0;
	unsigned seed = 12345;
	for (size_t tries = 0; k < SAMPLES && tries < 50 * SAMPLES; tries++) {
		char *p = r + (size_t)(rand_r(&seed) % blocks) * 16 * PG;
		unsigned char vec;
		if (mincore(p, PG, &vec) || (vec & 1))
			continue;
		uint64_t t0 = now_ns(CLOCK_MONOTONIC);
		(void)*(volatile char *)p;
		lat[k++] = now_ns(CLOCK_MONOTONIC) - t0;
	}
	qsort(lat, k, sizeof(lat[0]), cmp64);
	fprintf(logf, "lat %llu %llu %zu\n", k ? (unsigned long long)lat[k / 2] : 0ull,
		k ? (unsigned long long)lat[k * 99 / 100] : 0ull, k);
}

static int bare(char *gofile, size_t n)
{
	char *r = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int u = syscall(SYS_userfaultfd, O_CLOEXEC);
	struct uffdio_api api = {.api = UFFD_API};
	struct uffdio_register reg = {.range = {(unsigned long)r, n * PG}, .mode = UFFDIO_REGISTER_MODE_MISSING};
	if (r == MAP_FAILED || u < 0 || ioctl(u, UFFDIO_API, &api) || ioctl(u, UFFDIO_REGISTER, &reg))
		return 2;
	fprintf(logf, "uffd %d %p\n", u, (void *)r);
	while (access(gofile, F_OK) != 0)
		usleep(1000);
	touch(r, n);
	fprintf(logf, "done ok\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	logf = fopen(argv[1], "a");
	if (!logf)
		return 2;
	setvbuf(logf, NULL, _IONBF, 0);
	int forking = argc > 4 && strcmp(argv[4], "fork") == 0;
	int bench = argc > 4 && strcmp(argv[4], "bench") == 0;
	if (bench)
		holemod = 4099;
	size_t n = (size_t)atoi(argv[3]) * 256;
	if (argc > 4 && strcmp(argv[4], "bare") == 0)
		return bare(argv[2], n);
	char *r = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r == MAP_FAILED)
		return 2;
	fill(r, n);
	fprintf(logf, "ready %p %zu\n", (void *)r, n);
	while (access(argv[2], F_OK) != 0)
		usleep(1000);

	/* Restored: act while pages are still coming. */
	if (bench) {
		fprintf(logf, "running %llu\n", (unsigned long long)now_ns(CLOCK_REALTIME));
		touch(r, n);
		if (check("all", r, 0, n, 0))
			return 1;
		fprintf(logf, "done ok\n");
		return 0;
	}
	if (check("first", r + 5 * PG, 5, 1, 0))
		return 1;
	((uint64_t *)(r + 11 * PG))[0] = 42; /* a write fault */
	size_t ms = n * 7 / 8, mn = n / 16;
	char *dst = mmap(NULL, mn * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dst == MAP_FAILED || mremap(r + ms * PG, mn * PG, mn * PG, MREMAP_MAYMOVE | MREMAP_FIXED, dst) != dst) {
		fprintf(logf, "bad mremap\n");
		return 1;
	}
	size_t ds = n * 3 / 4, dn = n / 32;
	if (madvise(r + ds * PG, dn * PG, MADV_DONTNEED)) {
		fprintf(logf, "bad madvise\n");
		return 1;
	}
	size_t us = n * 13 / 16, un = n / 32;
	if (munmap(r + us * PG, un * PG)) {
		fprintf(logf, "bad munmap\n");
		return 1;
	}
	if (forking) {
		pid_t c = fork();
		if (c < 0) {
			fprintf(logf, "bad fork\n");
			return 1;
		}
		if (c == 0) {
			/* The child checks its half, the parent the other. */
			if (check("child", r + n / 2 * PG, n / 2, n / 8, 0) ||
			    check("child moved", dst, ms, mn, 0))
				_exit(1);
			_exit(0);
		}
		int st;
		if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(logf, "bad child status %#x\n", st);
			return 1;
		}
	}
	if (((uint64_t *)(r + 11 * PG))[0] != 42) {
		fprintf(logf, "bad write lost\n");
		return 1;
	}
	((uint64_t *)(r + 11 * PG))[0] = pat(11, 0);
	if (check("low", r, 0, ds, 0) || check("dontneed", r + ds * PG, ds, dn, 1) ||
	    check("mid", r + (ds + dn) * PG, ds + dn, us - ds - dn, 0) ||
	    check("after unmap", r + (us + un) * PG, us + un, ms - us - un, 0) ||
	    check("moved", dst, ms, mn, 0) || check("high", r + (ms + mn) * PG, ms + mn, n - ms - mn, 0))
		return 1;
	fprintf(logf, "done ok\n");
	return 0;
}
