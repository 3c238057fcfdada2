/* flags: maps regions carrying VMA flags (madvise advice, mlock,
 * growsdown, noreserve, shared, droppable, guard regions, mprotect),
 * prints "ready" (to the file named by its argument, if any), then sleeps
 * until killed. */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

static char *region(int prot, int flags)
{
	/* A hole after each: no merge with the next. */
	char *p = mmap(NULL, 3 * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	return mmap(p, 2 * 4096, prot, flags | MAP_FIXED | MAP_ANONYMOUS, -1, 0);
}

int main(int argc, char **argv)
{
	int advice[] = {MADV_DONTFORK, MADV_WIPEONFORK, MADV_DONTDUMP, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
			MADV_MERGEABLE, MADV_SEQUENTIAL, MADV_RANDOM, MADV_GUARD_INSTALL};
	for (unsigned i = 0; i < sizeof(advice) / sizeof(advice[0]); i++) {
		char *p = region(PROT_READ | PROT_WRITE, MAP_PRIVATE);
		if (!p)
			return 2;
		p[4096] = 1;
		madvise(p, 4096, advice[i]); /* splits the VMA: two of them */
	}
	char *p = region(PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_LOCKED);
	p = region(PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_GROWSDOWN);
	p = region(PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE);
	p = region(PROT_READ | PROT_WRITE, MAP_SHARED);
	p = region(PROT_READ | PROT_WRITE, MAP_DROPPABLE);
	p = region(PROT_READ | PROT_WRITE, MAP_PRIVATE);
	if (p)
		mprotect(p, 4096, PROT_READ | PROT_EXEC);
	p = region(PROT_READ | PROT_WRITE, MAP_PRIVATE);
	if (p)
		mlock(p, 4096);
	FILE *out = argc > 1 ? fopen(argv[1], "a") : stdout;
	if (!out)
		return 2;
	fprintf(out, "ready\n");
	fflush(out);
	for (;;)
		pause();
}
