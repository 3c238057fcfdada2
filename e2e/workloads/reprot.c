/*
 * reprot: a program that makes an anonymous region executable while it
 * runs and then runs code there, for migrations whose pre-copy rounds
 * mapped the region before the change.
 *
 *   reprot LOG
 *
 * It maps 1 MiB read-write (between PROT_NONE neighbours, so it merges
 * with nothing) and fills it. On SIGUSR2 it mprotects the whole region
 * read-write-execute, writes a function there and logs "rwx"; from then on
 * it calls that function every tick (restored without exec, it dies of
 * SIGSEGV). "tick N" goes to LOG every 10 ms. On SIGUSR1 it logs "done
 * ticks=N" and exits 0 (3 if the function returned a wrong value).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__)
#error reprot: x86-64 only
#endif

#define SZ (1 << 20)

static volatile sig_atomic_t usr1, usr2;
static void on1(int s) { (void)s; usr1 = 1; }
static void on2(int s) { (void)s; usr2 = 1; }

int main(int argc, char **argv) {
	if (argc != 2)
		return 2;
	FILE *log = fopen(argv[1], "a");
	if (!log)
		return 2;
	setvbuf(log, NULL, _IONBF, 0);
	char *g = mmap(NULL, 3 * SZ, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (g == MAP_FAILED)
		return 2;
	char *a = mmap(g + SZ, SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (a == MAP_FAILED)
		return 2;
	memset(a, 7, SZ);
	signal(SIGUSR1, on1);
	signal(SIGUSR2, on2);
	int rwx = 0;
	for (unsigned long n = 1;; n++) {
		if (usr2 && !rwx) {
			if (mprotect(a, SZ, PROT_READ | PROT_WRITE | PROT_EXEC))
				return 3;
			static const unsigned char code[] = {0xb8, 0x2a, 0, 0, 0, 0xc3}; /* mov $42,%eax; ret */
			memcpy(a, code, sizeof code);
			rwx = 1;
			fprintf(log, "rwx\n");
		}
		if (rwx && ((int (*)(void))(void *)a)() != 42)
			return 3;
		if (usr1) {
			fprintf(log, "done ticks=%lu\n", n - 1);
			return 0;
		}
		fprintf(log, "tick %lu\n", n);
		usleep(10000);
	}
}
