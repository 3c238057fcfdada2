/* orphan LOG GOFILE MIB: fills, says ready, waits for GOFILE; then forks:
 * the parent exits at once, the child logs "child PID", waits for
 * GOFILE.2 and checks its memory ("child done ok" or "bad ..."). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define PG 4096UL
static FILE *logf;
static uint64_t pat(size_t p, size_t w) { return (p * 0x9E3779B97F4A7C15ULL) ^ (w + 1) ^ 0x5a5a; }
int main(int argc, char **argv)
{
	logf = fopen(argv[1], "a");
	setvbuf(logf, NULL, _IONBF, 0);
	size_t n = (size_t)atoi(argv[3]) * 256;
	char *r = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (size_t p = 0; p < n; p++)
		for (size_t w = 0; w < PG / 8; w++)
			((uint64_t *)(r + p * PG))[w] = pat(p, w);
	fprintf(logf, "ready\n");
	while (access(argv[2], F_OK) != 0)
		usleep(1000);
	pid_t c = fork();
	if (c != 0)
		return 0;
	fprintf(logf, "child %d\n", getpid());
	char go2[4096];
	snprintf(go2, sizeof go2, "%s.2", argv[2]);
	while (access(go2, F_OK) != 0)
		usleep(1000);
	for (size_t p = n; p-- > 0;)
		for (size_t w = 0; w < PG / 8; w++)
			if (((uint64_t *)(r + p * PG))[w] != pat(p, w)) {
				fprintf(logf, "bad child page %zu word %zu: %#llx\n", p, w, (unsigned long long)((uint64_t *)(r + p * PG))[w]);
				return 1;
			}
	fprintf(logf, "child done ok\n");
	return 0;
}
