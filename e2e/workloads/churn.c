/*
 * churn: a program whose memory layout keeps changing, for migrations
 * whose pre-copy rounds must follow it.
 *
 *   churn LOG
 *
 * Every millisecond it changes one of its SLOTS regions of anonymous
 * memory: maps a new one, grows one with mremap (which may move it),
 * shrinks or unmaps one, makes one read-only or writable again
 * (mprotect), discards pages of one (MADV_DONTNEED: they read as zeros),
 * or rewrites one. Every page it keeps holds one word pattern, slot <<
 * 48 | gen << 16 | page, that it records apart (in its heap), so a page
 * restored from the wrong round, a region restored at its old place or
 * size, or a discarded page restored with old data is caught. "tick N"
 * goes to LOG every 10 ms. On SIGUSR1 it checks every page of every
 * region and logs "done ticks=N ops=M" and exits 0, or "bad ..." and
 * exits 3.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PG 4096
#define SLOTS 16
#define MAXPAGES 96
#define ZERO 0xffffffffu

struct slot {
	uint64_t *addr;
	unsigned npages;
	int readonly;
	uint32_t gen[MAXPAGES]; /* per page; ZERO: discarded */
};

static struct slot slots[SLOTS];
static volatile sig_atomic_t finish;
static uint64_t rnd = 88172645463325252ull;

static void on_usr1(int s) { (void)s; finish = 1; }

static uint64_t next(void)
{
	rnd ^= rnd << 13;
	rnd ^= rnd >> 7;
	rnd ^= rnd << 17;
	return rnd;
}

static void fillpage(int s, unsigned p, uint32_t gen)
{
	uint64_t v = (uint64_t)s << 48 | (uint64_t)gen << 16 | p;
	uint64_t *w = slots[s].addr + (size_t)p * (PG / 8);
	for (int i = 0; i < PG / 8; i++)
		w[i] = v;
	slots[s].gen[p] = gen;
}

static int check(FILE *log, int s)
{
	struct slot *sl = &slots[s];
	for (unsigned p = 0; p < sl->npages; p++) {
		uint64_t want = sl->gen[p] == ZERO ? 0 : (uint64_t)s << 48 | (uint64_t)sl->gen[p] << 16 | p;
		uint64_t *w = sl->addr + (size_t)p * (PG / 8);
		for (int i = 0; i < PG / 8; i++) {
			if (w[i] != want) {
				fprintf(log, "bad slot %d at %p page %u word %d: %#llx want %#llx\n", s, (void *)sl->addr, p, i,
					(unsigned long long)w[i], (unsigned long long)want);
				return -1;
			}
		}
	}
	return 0;
}

static void op(uint64_t n)
{
	int s = next() % SLOTS;
	struct slot *sl = &slots[s];
	uint32_t gen = (uint32_t)(n & 0xffff) | 1;
	if (!sl->addr) {
		unsigned np = 1 + next() % (MAXPAGES / 2);
		void *a = mmap(NULL, (size_t)np * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (a == MAP_FAILED)
			return;
		sl->addr = a;
		sl->npages = np;
		sl->readonly = 0;
		for (unsigned p = 0; p < np; p++)
			fillpage(s, p, gen);
		return;
	}
	switch (next() % 6) {
	case 0: { /* grow, maybe moving */
		if (sl->readonly || sl->npages >= MAXPAGES)
			break;
		unsigned np = sl->npages + 1 + next() % (MAXPAGES - sl->npages);
		void *a = mremap(sl->addr, (size_t)sl->npages * PG, (size_t)np * PG, MREMAP_MAYMOVE);
		if (a == MAP_FAILED)
			break;
		unsigned old = sl->npages;
		sl->addr = a;
		sl->npages = np;
		for (unsigned p = old; p < np; p++)
			fillpage(s, p, gen);
		break;
	}
	case 1: /* shrink, or unmap */
		if (sl->npages > 1 && next() % 2) {
			unsigned np = 1 + next() % (sl->npages - 1);
			munmap(sl->addr + (size_t)np * (PG / 8), (size_t)(sl->npages - np) * PG);
			sl->npages = np;
		} else {
			munmap(sl->addr, (size_t)sl->npages * PG);
			sl->addr = NULL;
			sl->npages = 0;
		}
		break;
	case 2: /* read-only, or writable again */
		if (mprotect(sl->addr, (size_t)sl->npages * PG, sl->readonly ? PROT_READ | PROT_WRITE : PROT_READ) == 0)
			sl->readonly = !sl->readonly;
		break;
	case 3: { /* discard some pages */
		if (sl->readonly)
			break;
		unsigned p = next() % sl->npages, k = 1 + next() % (sl->npages - p);
		if (madvise(sl->addr + (size_t)p * (PG / 8), (size_t)k * PG, MADV_DONTNEED) == 0)
			for (unsigned i = p; i < p + k; i++)
				sl->gen[i] = ZERO;
		break;
	}
	default: /* rewrite */
		if (sl->readonly)
			break;
		for (unsigned p = 0; p < sl->npages; p++)
			fillpage(s, p, gen);
	}
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	FILE *log = fopen(argv[1], "a");
	if (!log)
		return 2;
	setvbuf(log, NULL, _IOLBF, 0);
	signal(SIGUSR1, on_usr1);
	rnd ^= (uint64_t)getpid() << 20;
	uint64_t n = 0, ticks = 0;
	struct timespec ms = {0, 1000000};
	while (!finish) {
		op(++n);
		if (n % 10 == 0)
			fprintf(log, "tick %llu\n", (unsigned long long)++ticks);
		nanosleep(&ms, NULL);
	}
	for (int s = 0; s < SLOTS; s++)
		if (slots[s].addr && check(log, s) != 0)
			return 3;
	fprintf(log, "done ticks=%llu ops=%llu\n", (unsigned long long)ticks, (unsigned long long)n);
	return 0;
}
