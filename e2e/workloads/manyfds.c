// manyfds N FILE LOG: holds N more fds, a third each (in turn) regular
// files (FILE opened again each time, every other one seeked), pipe ends
// and eventfds, every fourth close-on-exec, for the fd benchmarks. It
// writes "ready NS" to LOG, NS the nanoseconds it took to make them and
// to dup3 each once (the floor: an open and a dup3 per fd done by the
// program itself), then sleeps.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc < 4)
		return 2;
	int n = atoi(argv[1]);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_max < (rlim_t)n + 64)
		return 3;
	rl.rlim_cur = n + 64;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 4;
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	int made = 0;
	for (int i = 0; made < n; i++) {
		int cloexec = i % 4 == 3 ? O_CLOEXEC : 0;
		switch (i % 3) {
		case 0: {
			int fd = open(argv[2], O_RDWR | cloexec);
			if (fd < 0)
				return 5;
			if (i % 2 && lseek(fd, i, SEEK_SET) < 0)
				return 6;
			made++;
			break;
		}
		case 1: {
			int p[2];
			if (made + 2 > n) {
				made = n;
				break;
			}
			if (pipe2(p, cloexec) < 0)
				return 7;
			made += 2;
			break;
		}
		case 2:
			if (eventfd(i, cloexec | EFD_NONBLOCK) < 0)
				return 8;
			made++;
			break;
		}
	}
	int spare = n + 32;
	for (int fd = 3; fd < n + 3; fd++)
		if (dup3(fd, spare, 0) < 0)
			return 9;
	close(spare);
	clock_gettime(CLOCK_MONOTONIC, &b);
	long long ns = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
	char buf[64];
	int len = snprintf(buf, sizeof buf, "ready %lld\n", ns);
	int fd = open(argv[argc - 1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, buf, len) != len)
		return 10;
	close(fd);
	for (;;)
		pause();
}
