// sharedfiles: a root and argv[1] children made with CLONE_FILES (one fd
// table for all), each with argv[2] MiB of private memory written, all
// asleep in pause(); "ready" goes to argv[3] once every child is. The
// tree runs on CPU argv[4] only: the kernel rewrites a thread's rseq
// cpu_id when it returns to user space on another CPU, so two dumps then
// read the same bytes.
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static size_t mib;
static int done[2];

static int child(void *arg) {
	size_t n = mib << 20;
	char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		_exit(1);
	for (size_t i = 0; i < n; i += 4096)
		p[i] = (char)((i >> 12) * 7 + (long)arg) | 1;
	if (write(done[1], "x", 1) != 1)
		_exit(1);
	for (;;)
		pause();
}

int main(int argc, char **argv) {
	if (argc != 5)
		return 2;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(atoi(argv[4]), &set);
	if (sched_setaffinity(0, sizeof set, &set) < 0) {
		perror("sched_setaffinity");
		return 1;
	}
	int kids = atoi(argv[1]);
	mib = (size_t)atol(argv[2]);
	if (pipe(done) < 0 || open("/etc/hostname", O_RDONLY) < 0)
		return 1;
	for (long i = 0; i < kids; i++) {
		char *stk = malloc(65536);
		if (!stk || clone(child, stk + 65536, CLONE_FILES | SIGCHLD, (void *)i) < 0) {
			perror("clone");
			return 1;
		}
	}
	char c;
	for (int i = 0; i < kids; i++)
		if (read(done[0], &c, 1) != 1)
			return 1;
	// Closed for every child too (one table).
	close(done[0]);
	close(done[1]);
	FILE *f = fopen(argv[3], "we");
	if (!f)
		return 1;
	fputs("ready\n", f);
	fclose(f);
	for (;;)
		pause();
}
