/* reprot: an anonymous region whose protection changes as a whole between
 * pre-copy rounds. argv: log, mode. mode "exec": mapped rw, made rwx on
 * SIGUSR1, then code written there is called every tick (a restore without
 * exec kills it). mode "noexec": mapped r-x, made rw on SIGUSR1. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__)
#error reprot: x86-64 only
#endif

static volatile sig_atomic_t go;
static void on1(int s) { (void)s; go = 1; }

int main(int argc, char **argv) {
	if (argc != 3)
		return 2;
	int exec = strcmp(argv[2], "exec") == 0;
	FILE *log = fopen(argv[1], "a");
	if (!log)
		return 2;
	setvbuf(log, NULL, _IONBF, 0);
	/* A PROT_NONE reservation around it: no neighbour merges with it. */
	char *g = mmap(NULL, 3 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *a = mmap(g + (1 << 20), 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (g == MAP_FAILED || a == MAP_FAILED)
		return 2;
	memset(a, 7, 1 << 20);
	if (!exec && mprotect(a, 1 << 20, PROT_READ | PROT_EXEC))
		return 2;
	signal(SIGUSR1, on1);
	fprintf(log, "ready A=%p\n", (void *)a);
	int changed = 0;
	for (unsigned long n = 0;; n++) {
		if (go && !changed) {
			changed = 1;
			if (mprotect(a, 1 << 20, exec ? PROT_READ | PROT_WRITE | PROT_EXEC : PROT_READ | PROT_WRITE))
				return 3;
			if (exec) {
				static const unsigned char code[] = {0xb8, 0x2a, 0, 0, 0, 0xc3}; /* mov $42,%eax; ret */
				memcpy(a, code, sizeof code);
			}
			fprintf(log, "changed\n");
		}
		if (changed && exec && ((int (*)(void))(void *)a)() != 42)
			return 4;
		if (n % 10 == 9)
			fprintf(log, "tick %lu\n", n / 10 + 1);
		usleep(10000);
	}
}
