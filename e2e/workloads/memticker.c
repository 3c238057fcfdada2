/*
 * memticker: a program that measures its own downtime, for the README demo
 * and migration tests.
 *
 *   memticker [-m MiB] [-w MB/s] LOG
 *
 * It fills MiB of anonymous memory, then ticks every millisecond (absolute
 * CLOCK_MONOTONIC deadlines) and at each tick rewrites enough whole pages to
 * dirty MB/s (default 8). It measures the gap between consecutive ticks: a
 * program frozen for a checkpoint or a migration sees one long gap, which is
 * the downtime it suffered. Gaps over 5 ms are logged as they happen:
 * "gap us=N ticks=T". LOG is opened O_APPEND; stdout stays free.
 *
 * Every page holds its generation in its first word and a pattern derived
 * from (page, generation) in the rest; a separate table holds each page's
 * generation too. On SIGUSR1 it checks every page against the table (a page
 * restored from an older round, zero-filled or torn fails) and logs
 * "check ok pages=N writes=W ticks=T maxgap_us=G" or "check bad page=P ..."
 * and carries on. SIGUSR2 restarts the longest-gap measure (logs "reset").
 * SIGHUP rewrites every page once, at once (its write rate jumps; logs
 * "burst pages=N"). SIGTERM ends it with status 0.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define GAP_LOG_NS 5000000LL

static volatile sig_atomic_t check, reset, stop, burst;
static uint64_t *mem, *gens;
static size_t pages;
static int logfd;

static void on_usr1(int s) { (void)s; check = 1; }
static void on_usr2(int s) { (void)s; reset = 1; }
static void on_term(int s) { (void)s; stop = 1; }
static void on_hup(int s) { (void)s; burst = 1; }

static inline uint64_t pattern(uint64_t page, uint64_t gen, uint64_t i)
{
	uint64_t x = (page << 32) ^ (gen * 0x9e3779b97f4a7c15ULL) ^ (i * 0xbf58476d1ce4e5b9ULL);
	x ^= x >> 31;
	return x | 1; /* never zero: a zero-filled page cannot pass */
}

static void write_page(size_t p)
{
	uint64_t g = ++gens[p];
	uint64_t *w = mem + p * WORDS;
	w[0] = g;
	for (uint64_t i = 1; i < WORDS; i++)
		w[i] = pattern(p, g, i);
}

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int verify(size_t *bad_page, uint64_t *got, uint64_t *want)
{
	for (size_t p = 0; p < pages; p++) {
		uint64_t *w = mem + p * WORDS;
		if (w[0] != gens[p]) {
			*bad_page = p, *got = w[0], *want = gens[p];
			return 0;
		}
		for (uint64_t i = 1; i < WORDS; i++)
			if (w[i] != pattern(p, gens[p], i)) {
				*bad_page = p, *got = w[i], *want = pattern(p, gens[p], i);
				return 0;
			}
	}
	return 1;
}

int main(int argc, char **argv)
{
	long mib = 64;
	double mbps = 8;
	int c;
	while ((c = getopt(argc, argv, "m:w:")) != -1) {
		switch (c) {
		case 'm': mib = atol(optarg); break;
		case 'w': mbps = atof(optarg); break;
		default: goto usage;
		}
	}
	if (optind != argc - 1 || mib <= 0 || mbps < 0) {
usage:
		fprintf(stderr, "usage: memticker [-m MiB] [-w MB/s] LOG\n");
		return 2;
	}
	logfd = open(argv[optind], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (logfd < 0) {
		perror(argv[optind]);
		return 1;
	}
	pages = (size_t)mib * 1024 * 1024 / PAGE;
	mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	gens = mmap(NULL, pages * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || gens == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (size_t p = 0; p < pages; p++)
		write_page(p);

	struct sigaction sa = {0};
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sa.sa_handler = on_hup;
	sigaction(SIGHUP, &sa, NULL);

	/* Pages to rewrite per 1 ms tick, kept as a fraction across ticks. */
	double per_tick = mbps * 1e6 / PAGE / 1000, owed = 0;
	size_t next = 0;
	uint64_t ticks = 0, writes = 0;
	int64_t maxgap = 0;
	dprintf(logfd, "ready pid=%d pages=%zu mbps=%g\n", getpid(), pages, mbps);

	int64_t prev = now_ns(), deadline = prev;
	while (!stop) {
		deadline += 1000000;
		struct timespec ts = {deadline / 1000000000LL, deadline % 1000000000LL};
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
		int64_t t = now_ns();
		int64_t gap = t - prev;
		prev = t;
		ticks++;
		if (gap > maxgap)
			maxgap = gap;
		if (gap > GAP_LOG_NS)
			dprintf(logfd, "gap us=%lld ticks=%llu\n", (long long)(gap / 1000), (unsigned long long)ticks);
		/* The gap that ended now began before the reset: not counted. */
		if (reset) {
			reset = 0;
			maxgap = 0;
			dprintf(logfd, "reset ticks=%llu\n", (unsigned long long)ticks);
		}
		/* After a long stop, do not try to catch up on missed ticks. */
		if (t - deadline > 1000000)
			deadline = t;
		for (owed += per_tick; owed >= 1; owed--) {
			write_page(next);
			next = (next + 1) % pages;
			writes++;
		}
		if (burst) {
			burst = 0;
			for (size_t p = 0; p < pages; p++)
				write_page(p);
			writes += pages;
			dprintf(logfd, "burst pages=%zu\n", pages);
			prev = now_ns();
			deadline = prev;
		}
		if (check) {
			check = 0;
			size_t bp;
			uint64_t got, want;
			if (verify(&bp, &got, &want))
				dprintf(logfd, "check ok pages=%zu writes=%llu ticks=%llu maxgap_us=%lld\n", pages,
					(unsigned long long)writes, (unsigned long long)ticks, (long long)(maxgap / 1000));
			else
				dprintf(logfd, "check bad page=%zu got=%#llx want=%#llx\n", bp,
					(unsigned long long)got, (unsigned long long)want);
			/* The check itself takes time: do not count it as a gap. */
			prev = now_ns();
			deadline = prev;
		}
	}
	dprintf(logfd, "stopped ticks=%llu\n", (unsigned long long)ticks);
	return 0;
}
