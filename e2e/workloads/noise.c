/*
 * noise: incompressible memory for godwit's compression measurements.
 *
 *   noise -m MiB [-z] LOG
 *
 * It fills MiB of anonymous memory with xorshift64 output (-z: with
 * zeros, written, so that every page is present), logs "ready", and
 * sleeps. SIGUSR1 checks every word against the same sequence and logs
 * "done ticks=0 maxgap_us=0" and exits 0, or logs "bad page P" and
 * exits 3.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t finish;

static void on_usr1(int s) { (void)s; finish = 1; }

int main(int argc, char **argv)
{
	size_t mib = 64;
	int zero = 0, c;
	while ((c = getopt(argc, argv, "m:z")) != -1) {
		switch (c) {
		case 'm': mib = strtoul(optarg, NULL, 0); break;
		case 'z': zero = 1; break;
		default: return 2;
		}
	}
	if (optind >= argc)
		return 2;
	FILE *log = fopen(argv[optind], "a");
	if (!log)
		return 2;
	setvbuf(log, NULL, _IOLBF, 0);
	size_t n = mib << 17; /* 8-byte words */
	uint64_t *m = mmap(NULL, n * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return 2;
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		m[i] = zero ? 0 : x;
	}
	signal(SIGUSR1, on_usr1);
	fprintf(log, "ready\n");
	while (!finish)
		pause();
	x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		if (m[i] != (zero ? 0 : x)) {
			fprintf(log, "bad page %zu\n", i / 512);
			return 3;
		}
	}
	fprintf(log, "done ticks=0 maxgap_us=0\n");
	return 0;
}
