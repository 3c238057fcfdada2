/* Test helper for package uffd: a target process driven by line commands on
 * stdin; answers one line on stdout per command. fd 3, when present, is a unix
 * socket used to pass the userfaultfd with SCM_RIGHTS. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int cmp64(const void *a, const void *b) {
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void send_fd(int sock, int fd) {
	char b = 'F';
	struct iovec iov = {&b, 1};
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct msghdr mh = {0};
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cbuf;
	mh.msg_controllen = sizeof(cbuf);
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &mh, 0) != 1) {
		perror("sendmsg");
		exit(2);
	}
}

int main(void) {
	char cmd[64];
	setvbuf(stdout, NULL, _IOLBF, 0);
	long ps = sysconf(_SC_PAGESIZE);
	while (scanf("%63s", cmd) == 1) {
		if (!strcmp(cmd, "uffd")) { /* create a uffd, send it on fd 3 if possible */
			int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
			if (fd < 0) { printf("err %d\n", errno); continue; }
			int sent = 0;
			struct sockaddr_storage ss; socklen_t sl = sizeof(ss);
			if (getsockname(3, (struct sockaddr *)&ss, &sl) == 0) { send_fd(3, fd); sent = 1; }
			printf("%d %d\n", fd, sent);
		} else if (!strcmp(cmd, "close")) {
			int fd; scanf("%d", &fd);
			printf("%d\n", close(fd));
		} else if (!strcmp(cmd, "map")) { /* map N pages */
			unsigned long n; scanf("%lu", &n);
			void *p = mmap(NULL, n * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
			if (p == MAP_FAILED) { printf("err %d\n", errno); continue; }
			printf("%lx\n", (unsigned long)p);
		} else if (!strcmp(cmd, "smap")) { /* smap N: map N pages of shared anonymous memory (shmem) */
			unsigned long n; scanf("%lu", &n);
			void *p = mmap(NULL, n * ps, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
			if (p == MAP_FAILED) { printf("err %d\n", errno); continue; }
			printf("%lx\n", (unsigned long)p);
		} else if (!strcmp(cmd, "mapat")) { /* mapat ADDR N: MAP_FIXED over ADDR */
			unsigned long a, n; scanf("%lx %lu", &a, &n);
			void *p = mmap((void *)a, n * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
			if (p == MAP_FAILED) { printf("err %d\n", errno); continue; }
			printf("%lx\n", (unsigned long)p);
		} else if (!strcmp(cmd, "fill")) { /* fill ADDR N: write every page (warm) */
			unsigned long a, n; scanf("%lx %lu", &a, &n);
			for (unsigned long i = 0; i < n; i++) ((volatile char *)a)[i * ps] = 1;
			printf("ok\n");
		} else if (!strcmp(cmd, "sum")) { /* sum ADDR N: read the first byte of N pages */
			unsigned long a, n, s = 0; scanf("%lx %lu", &a, &n);
			for (unsigned long i = 0; i < n; i++) s += ((volatile unsigned char *)a)[i * ps];
			printf("%lu\n", s);
		} else if (!strcmp(cmd, "wr")) { /* wr ADDR K i1..iK: write byte to page i */
			unsigned long a, k, i; scanf("%lx %lu", &a, &k);
			for (unsigned long j = 0; j < k; j++) { scanf("%lu", &i); ((volatile char *)a)[i * ps + 7]++; }
			printf("ok\n");
		} else if (!strcmp(cmd, "dontneed")) {
			unsigned long a, l; scanf("%lx %lx", &a, &l);
			printf("%d\n", madvise((void *)a, l, MADV_DONTNEED) ? errno : 0);
		} else if (!strcmp(cmd, "thp")) {
			unsigned long a, l; scanf("%lx %lx", &a, &l);
			printf("%d\n", madvise((void *)a, l, MADV_HUGEPAGE) ? errno : 0);
		} else if (!strcmp(cmd, "munmap")) {
			unsigned long a, l; scanf("%lx %lx", &a, &l);
			printf("%d\n", munmap((void *)a, l) ? errno : 0);
		} else if (!strcmp(cmd, "mremap")) { /* mremap OLD LEN NEW */
			unsigned long a, l, b; scanf("%lx %lx %lx", &a, &l, &b);
			void *r = mremap((void *)a, l, l, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)b);
			printf("%d\n", r == MAP_FAILED ? errno : 0);
		} else if (!strcmp(cmd, "fork")) { /* fork a child that exits at once */
			pid_t p = fork();
			if (p == 0) _exit(0);
			int st;
			waitpid(p, &st, 0);
			printf("%d\n", p);
		} else if (!strcmp(cmd, "cpu")) {
			int c; scanf("%d", &c);
			cpu_set_t s; CPU_ZERO(&s); CPU_SET(c, &s);
			printf("%d\n", sched_setaffinity(0, sizeof(s), &s) ? errno : 0);
		} else if (!strcmp(cmd, "lat")) {
			/* lat ADDR N STEP: touch every STEP-th page of N, time each
			 * touch; prints p50 p99 total_ns count */
			unsigned long a, n, step; scanf("%lx %lu %lu", &a, &n, &step);
			unsigned long cnt = (n + step - 1) / step;
			uint64_t *lat = calloc(cnt, sizeof(*lat));
			uint64_t t0 = now_ns();
			unsigned long s = 0;
			for (unsigned long i = 0, j = 0; i < n; i += step, j++) {
				uint64_t t = now_ns();
				s += ((volatile unsigned char *)a)[i * ps];
				lat[j] = now_ns() - t;
			}
			uint64_t tot = now_ns() - t0;
			qsort(lat, cnt, sizeof(*lat), cmp64);
			printf("%lu %lu %lu %lu %lu\n", (unsigned long)lat[cnt / 2], (unsigned long)lat[cnt * 99 / 100],
			       (unsigned long)tot, cnt, s);
			free(lat);
		} else if (!strcmp(cmd, "exit")) {
			return 0;
		} else {
			printf("unknown %s\n", cmd);
		}
	}
	return 0;
}
