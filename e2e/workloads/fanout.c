// fanout N LOG: a root with N-1 children that sleep, for benchmarks. The
// root writes "ready NS" to LOG, NS the nanoseconds its forks took (the
// floor of making as many tasks of this size), then sleeps.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc < 3)
		return 2;
	int n = atoi(argv[1]);
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int i = 1; i < n; i++) {
		pid_t p = fork();
		if (p < 0)
			return 3;
		if (p == 0)
			for (;;)
				pause();
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	long long ns = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
	char buf[64];
	int len = snprintf(buf, sizeof buf, "ready %lld\n", ns);
	int fd = open(argv[argc - 1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, buf, len) != len)
		return 4;
	close(fd);
	for (;;)
		pause();
}
