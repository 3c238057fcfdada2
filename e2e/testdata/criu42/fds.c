/*
 * fds: a tiny libc-free program for the CRIU 4.2 image fixtures (see
 * gen.sh) that holds one file of each common kind: fd 3, the regular file
 * /tmp/godwit-criu42/fds.data (gen.sh and the test write its 4096 bytes)
 * read to offset 1234; fds 4 and 5, a pipe with "pipe-bytes" queued; fds 6
 * and 7, a unix stream socketpair with "sock-bytes" queued towards 7; fd 8,
 * an eventfd holding 42; fd 9, a deleted file holding "ghost-data"; fd 10,
 * a deleted sparse file of 20000 bytes, "abc" at 0 and "xyz" at 16384 (CRIU
 * keeps files of 12 KiB and more in chunks); fd 11, an inotify watching
 * fds.d for IN_CREATE (wd 1) and fds.d/f for IN_MODIFY (wd 2); fd 12, a
 * unix stream socket listening on /tmp/godwit-criu42/fds.sock. It counts
 * ticks every 5 ms; on SIGUSR1 it checks every one (the offset, the queued
 * bytes, the counter, the deleted files' contents, the events of both
 * watches, a connection to the listener) and stores 1 in verdict when all
 * are as dumped, else the number of the first check that failed (2 and
 * up). A test reads ticks and verdict from /proc/PID/mem (the binary is
 * not PIE).
 */
#include <asm/unistd.h>
#include <linux/fcntl.h>
#include <linux/time.h>
#include <linux/signal.h>
#include <linux/inotify.h>
#include <linux/un.h>
#include <asm/stat.h>

#define AF_UNIX 1
#define SOCK_STREAM 1
#define DIR "/tmp/godwit-criu42/"

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
	struct stat st;
	if (sys4(__NR_fstat, 9, (long)&st, 0, 0) != 0 || st.st_nlink != 0 || st.st_size != 10 ||
	    sys4(__NR_pread64, 9, (long)buf, 10, 0) != 10 || !same(buf, "ghost-data", 10))
		return 6;
	if (sys4(__NR_fstat, 10, (long)&st, 0, 0) != 0 || st.st_nlink != 0 || st.st_size != 20000 ||
	    sys4(__NR_pread64, 10, (long)buf, 3, 0) != 3 || !same(buf, "abc", 3) ||
	    sys4(__NR_pread64, 10, (long)buf, 3, 16384) != 3 || !same(buf, "xyz", 3) ||
	    sys4(__NR_pread64, 10, (long)buf, 1, 8000) != 1 || buf[0] != 0)
		return 7;
	/* inotify: a new file in fds.d (wd 1), a write to fds.d/f (wd 2) */
	sys4(__NR_unlink, (long)DIR "fds.d/new", 0, 0, 0);
	long nf = sys4(__NR_open, (long)DIR "fds.d/new", O_CREAT | O_WRONLY, 0600, 0);
	long ff = sys4(__NR_open, (long)DIR "fds.d/f", O_WRONLY, 0, 0);
	if (nf < 0 || ff < 0 || sys4(__NR_write, ff, (long)"m", 1, 0) != 1)
		return 8;
	sys4(__NR_close, nf, 0, 0, 0);
	sys4(__NR_close, ff, 0, 0, 0);
	char ev[512] __attribute__((aligned(8)));
	long n = sys4(__NR_read, 11, (long)ev, sizeof(ev), 0);
	int created = 0, modified = 0;
	for (long off = 0; n > 0 && off < n;) {
		struct inotify_event *e = (struct inotify_event *)(ev + off);
		if (e->wd == 1 && (e->mask & IN_CREATE) && e->len >= 4 && same(e->name, "new", 4))
			created++;
		else if (e->wd == 2 && (e->mask & IN_MODIFY))
			modified++;
		else
			return 9;
		off += sizeof(*e) + e->len;
	}
	if (created != 1 || modified != 1)
		return 10;
	/* the listener takes a connection */
	struct sockaddr_un a = {AF_UNIX, DIR "fds.sock"};
	long c = sys4(__NR_socket, AF_UNIX, SOCK_STREAM, 0, 0);
	if (c < 0 || sys4(__NR_connect, c, (long)&a, sizeof(a), 0) != 0)
		return 11;
	long s = sys4(__NR_accept4, 12, 0, 0, 0);
	if (s < 0)
		return 12;
	sys4(__NR_close, s, 0, 0, 0);
	sys4(__NR_close, c, 0, 0, 0);
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
	if (sys4(__NR_open, (long)DIR "fds.ghost", O_RDWR | O_CREAT | O_TRUNC, 0604, 0) != 9 ||
	    sys4(__NR_write, 9, (long)"ghost-data", 10, 0) != 10 || sys4(__NR_unlink, (long)DIR "fds.ghost", 0, 0, 0) != 0)
		sys4(__NR_exit, 14, 0, 0, 0);
	if (sys4(__NR_open, (long)DIR "fds.big", O_RDWR | O_CREAT | O_TRUNC, 0600, 0) != 10 ||
	    sys4(__NR_pwrite64, 10, (long)"abc", 3, 0) != 3 || sys4(__NR_pwrite64, 10, (long)"xyz", 3, 16384) != 3 ||
	    sys4(__NR_ftruncate, 10, 20000, 0, 0) != 0 || sys4(__NR_unlink, (long)DIR "fds.big", 0, 0, 0) != 0)
		sys4(__NR_exit, 15, 0, 0, 0);
	sys4(__NR_mkdir, (long)DIR "fds.d", 0700, 0, 0);
	long f = sys4(__NR_open, (long)DIR "fds.d/f", O_CREAT | O_WRONLY, 0600, 0);
	if (f < 0)
		sys4(__NR_exit, 16, 0, 0, 0);
	sys4(__NR_close, f, 0, 0, 0);
	if (sys4(__NR_inotify_init1, IN_NONBLOCK, 0, 0, 0) != 11 ||
	    sys4(__NR_inotify_add_watch, 11, (long)DIR "fds.d", IN_CREATE, 0) != 1 ||
	    sys4(__NR_inotify_add_watch, 11, (long)DIR "fds.d/f", IN_MODIFY, 0) != 2)
		sys4(__NR_exit, 17, 0, 0, 0);
	struct sockaddr_un a = {AF_UNIX, DIR "fds.sock"};
	sys4(__NR_unlink, (long)a.sun_path, 0, 0, 0);
	if (sys4(__NR_socket, AF_UNIX, SOCK_STREAM, 0, 0) != 12 || sys4(__NR_bind, 12, (long)&a, sizeof(a), 0) != 0 ||
	    sys4(__NR_listen, 12, 4, 0, 0) != 0)
		sys4(__NR_exit, 18, 0, 0, 0);
	for (;;) {
		ticks++;
		if (usr1 && !verdict)
			verdict = check();
		nap();
	}
}

__asm__(".globl _start\n_start:\n\tand $-16, %rsp\n\tcall _start_c\n\tud2\n");
