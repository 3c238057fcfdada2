/* discard: 8 MiB of written anonymous memory, 2 MiB aligned. SIGUSR1
 * discards (MADV_DONTNEED) its second 2 MiB, a whole page table's worth
 * (with CONFIG_PT_RECLAIM the kernel frees the table: no PTE is left to
 * say the pages were there); SIGUSR2 logs a hash of the 8 MiB.
 *
 *   discard LOG
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MB (1024 * 1024)

static volatile sig_atomic_t want_discard, want_hash;
static void on_usr1(int s) { (void)s; want_discard = 1; }
static void on_usr2(int s) { (void)s; want_hash = 1; }

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	FILE *log = fopen(argv[1], "a");
	if (!log)
		return 2;
	setvbuf(log, NULL, _IONBF, 0);
	char *raw = mmap(NULL, 10 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return 2;
	char *a = (char *)(((uintptr_t)raw + 2 * MB - 1) & ~(uintptr_t)(2 * MB - 1));
	madvise(a, 8 * MB, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < 8 * MB; i += 4096)
		memset(a + i, (int)(i / 4096 % 251) + 1, 4096);
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	fprintf(log, "ready pid=%d A=%p\n", getpid(), (void *)a);
	for (;;) {
		if (want_discard) {
			want_discard = 0;
			if (madvise(a + 2 * MB, 2 * MB, MADV_DONTNEED) != 0)
				return 3;
			fprintf(log, "discarded\n");
		}
		if (want_hash) {
			want_hash = 0;
			uint64_t h = 1469598103934665603ull;
			for (size_t i = 0; i < 8 * MB; i++)
				h = (h ^ (unsigned char)a[i]) * 1099511628211ull;
			fprintf(log, "hash %llx\n", (unsigned long long)h);
		}
		usleep(1000);
	}
}
