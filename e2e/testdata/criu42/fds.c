/*
 * fds: a tiny libc-free program for the CRIU 4.2 image fixtures (see
 * gen.sh) that holds one file of each common kind: fd 3, the regular file
 * /tmp/godwit-criu42/fds.data (gen.sh and the test write its 4096 bytes)
 * read to offset 1234; fds 4 and 5, a pipe with "pipe-bytes" queued; fds 6
 * and 7, a unix stream socketpair with "sock-bytes" queued towards 7; fd 8,
 * an eventfd holding 42. It counts ticks every 5 ms; on SIGUSR1 it checks
 * every one (the offset, the queued bytes, the counter) and stores 1 in
 * verdict when all are as dumped, else the number of the first check that
 * failed (2 and up). A test reads ticks and verdict from /proc/PID/mem (the
 * binary is not PIE).
 */
#include <asm/unistd.h>
#include <linux/fcntl.h>
#include <linux/time.h>
#include <linux/signal.h>

#define AF_UNIX 1
#define SOCK_STREAM 1

static long sys4(long n, long a, long b, long c, long d)
{
	long r;
	register long r10 __asm__("r10") = d;
	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
	return r;
}

volatile unsigned long ticks, verdict;
static volatile int usr1;

static void on_usr1(int sig)
{
	(void)sig;
	usr1 = 1;
}

void restore_rt(void);
__asm__(".globl restore_rt\nrestore_rt:\n\tmov $15, %eax\n\tsyscall\n\tud2\n");

struct ksigaction {
	void (*handler)(int);
	unsigned long flags;
	void (*restorer)(void);
	unsigned long mask;
};

static void nap(void)
{
	struct timespec t = {0, 5000000};
	sys4(__NR_nanosleep, (long)&t, 0, 0, 0);
}

static int same(const char *a, const char *b, int n)
{
	for (int i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

static unsigned long check(void)
{
	char buf[16];
	unsigned long v = 0;
	if (sys4(__NR_lseek, 3, 0, 1 /* SEEK_CUR */, 0) != 1234)
		return 2;
	if (sys4(__NR_read, 4, (long)buf, sizeof(buf), 0) != 10 || !same(buf, "pipe-bytes", 10))
		return 3;
	if (sys4(__NR_read, 7, (long)buf, sizeof(buf), 0) != 10 || !same(buf, "sock-bytes", 10))
		return 4;
	if (sys4(__NR_read, 8, (long)&v, 8, 0) != 8 || v != 42)
		return 5;
	return 1;
}

void _start_c(void)
{
	struct ksigaction sa = {on_usr1, SA_RESTORER | SA_RESTART, restore_rt, 0};
	int p[2], s[2];
	unsigned long v = 42;
	char buf[1234];
	sys4(__NR_rt_sigaction, SIGUSR1, (long)&sa, 0, 8);
	if (sys4(__NR_open, (long)"/tmp/godwit-criu42/fds.data", O_RDWR, 0, 0) != 3 ||
	    sys4(__NR_read, 3, (long)buf, sizeof(buf), 0) != sizeof(buf))
		sys4(__NR_exit, 10, 0, 0, 0);
	if (sys4(__NR_pipe2, (long)p, 0, 0, 0) != 0 || p[0] != 4 ||
	    sys4(__NR_write, 5, (long)"pipe-bytes", 10, 0) != 10)
		sys4(__NR_exit, 11, 0, 0, 0);
	if (sys4(__NR_socketpair, AF_UNIX, SOCK_STREAM, 0, (long)s) != 0 || s[0] != 6 ||
	    sys4(__NR_write, 6, (long)"sock-bytes", 10, 0) != 10)
		sys4(__NR_exit, 12, 0, 0, 0);
	if (sys4(__NR_eventfd2, 0, 0, 0, 0) != 8 || sys4(__NR_write, 8, (long)&v, 8, 0) != 8)
		sys4(__NR_exit, 13, 0, 0, 0);
	for (;;) {
		ticks++;
		if (usr1 && !verdict)
			verdict = check();
		nap();
	}
}

__asm__(".globl _start\n_start:\n\tand $-16, %rsp\n\tcall _start_c\n\tud2\n");
