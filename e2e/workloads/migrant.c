/*
 * migrant: the downtime workload of godwit's migration tests.
 *
 *   migrant -m MiB -r KiB_PER_S LOG
 *
 * It fills MiB of anonymous memory (page p holds words p<<32 | gen[p]),
 * logs "ready", then ticks every millisecond (absolute clock_nanosleep on
 * CLOCK_MONOTONIC), each tick rewriting the next pages in turn at
 * KiB_PER_S (generation bumped, whole page rewritten) and recording the
 * longest gap between two ticks: the time it was frozen, as the program
 * itself sees it. SIGUSR2 resets the longest gap (after warm-up); SIGUSR1
 * checks every page against its generation and logs
 * "done ticks=N maxgap_us=G movegap_us=M" and exits 0, or logs "bad page P"
 * and exits 3. M is the gap across the move itself: the one at whose end
 * the program finds itself in another PID namespace (another lab host);
 * G may be longer (a stall elsewhere in the run: the tracker's start, a
 * busy machine).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PG 4096
#define WORDS (PG / 8)

static volatile sig_atomic_t finish, reset;

static void on_usr1(int s) { (void)s; finish = 1; }
static void on_usr2(int s) { (void)s; reset = 1; }

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* pidns names the PID namespace the program runs in (0: unknown). */
static uint64_t pidns(void)
{
	struct stat st;
	if (stat("/proc/self/ns/pid", &st) != 0)
		return 0;
	return (uint64_t)st.st_ino;
}

static void fill(uint64_t *page, uint64_t p, uint32_t gen)
{
	uint64_t v = p << 32 | gen;
	for (int i = 0; i < WORDS; i++)
		page[i] = v;
}

int main(int argc, char **argv)
{
	size_t mib = 64;
	long rate = 8192; /* KiB per second */
	int c;
	while ((c = getopt(argc, argv, "m:r:")) != -1) {
		switch (c) {
		case 'm': mib = strtoul(optarg, NULL, 10); break;
		case 'r': rate = strtol(optarg, NULL, 10); break;
		default: return 2;
		}
	}
	if (optind != argc - 1)
		return 2;
	FILE *log = fopen(argv[optind], "a");
	if (!log)
		return 2;
	setvbuf(log, NULL, _IOLBF, 0);
	size_t npages = mib * 256;
	uint64_t *mem = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint32_t *gen = calloc(npages, sizeof(*gen));
	if (mem == MAP_FAILED || !gen)
		return 2;
	for (size_t p = 0; p < npages; p++)
		fill(mem + p * WORDS, p, 0);
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	fprintf(log, "ready pid=%d\n", getpid());
	/* Pages per tick, in 1/1000ths, so low rates still write. */
	uint64_t milli_pages = (uint64_t)rate * 1024 / PG, acc = 0;
	size_t next = 0;
	uint64_t ticks = 0, maxgap = 0, movegap = 0, prev = now_ns();
	uint64_t home = pidns();
	struct timespec due;
	clock_gettime(CLOCK_MONOTONIC, &due);
	while (!finish) {
		due.tv_nsec += 1000000;
		if (due.tv_nsec >= 1000000000) {
			due.tv_sec++;
			due.tv_nsec -= 1000000000;
		}
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL);
		uint64_t t = now_ns();
		if (reset) {
			reset = 0;
			maxgap = 0;
		} else if (t - prev > maxgap) {
			maxgap = t - prev;
		}
		if (home != 0) {
			uint64_t ns = pidns();
			if (ns != 0 && ns != home) {
				home = ns;
				movegap = t - prev;
			}
		}
		prev = t;
		/* After a long gap the schedule restarts from now. */
		if (t > (uint64_t)due.tv_sec * 1000000000ull + (uint64_t)due.tv_nsec + 5000000) {
			clock_gettime(CLOCK_MONOTONIC, &due);
		}
		ticks++;
		for (acc += milli_pages; acc >= 1000; acc -= 1000) {
			gen[next]++;
			fill(mem + next * WORDS, next, gen[next]);
			next = (next + 1) % npages;
		}
	}
	for (size_t p = 0; p < npages; p++) {
		uint64_t v = (uint64_t)p << 32 | gen[p];
		uint64_t *page = mem + p * WORDS;
		for (int i = 0; i < WORDS; i++) {
			if (page[i] != v) {
				fprintf(log, "bad page %zu word %d: %#llx want %#llx\n", p, i,
					(unsigned long long)page[i], (unsigned long long)v);
				return 3;
			}
		}
	}
	fprintf(log, "done ticks=%llu maxgap_us=%llu movegap_us=%llu\n", (unsigned long long)ticks,
		(unsigned long long)(maxgap / 1000), (unsigned long long)(movegap / 1000));
	return 0;
}
