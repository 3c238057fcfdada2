/* lazy: a workload for lazy restore. It fills a private anonymous region
 * with a known pattern (some pages never touched), says "ready", and waits
 * for the file argv[2]. Then, while its pages are still coming, it writes,
 * mremaps, madvises(DONTNEED), munmaps and (with argv[4] = "fork") forks a
 * child that checks its own copy, and finally checks every page it still
 * has: "done ok" on success, "bad ..." naming the first wrong page.
 * usage: lazy LOG GOFILE MIB [fork] */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096UL
#define WORDS (PG / 8)

static FILE *logf;

static uint64_t pat(size_t page, size_t w) { return (page * 0x9E3779B97F4A7C15ULL) ^ (w + 1) ^ 0x5a5a; }
static int hole(size_t page) { return page % 7 == 3; }

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

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	logf = fopen(argv[1], "a");
	if (!logf)
		return 2;
	setvbuf(logf, NULL, _IONBF, 0);
	int forking = argc > 4 && strcmp(argv[4], "fork") == 0;
	size_t n = (size_t)atoi(argv[3]) * 256;
	char *r = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r == MAP_FAILED)
		return 2;
	fill(r, n);
	fprintf(logf, "ready %p %zu\n", (void *)r, n);
	while (access(argv[2], F_OK) != 0)
		usleep(1000);

	/* Restored: act while pages are still coming. */
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
