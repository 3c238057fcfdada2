/*
 * gaps: one piece of task state per mode, set up, then checked by the
 * program itself after restore. Usage: gaps MODE DIR LOG. It writes
 * "ready" to LOG, waits for SIGUSR1, checks, and writes "done MODE" (exit
 * 0) or "BAD <what>" (exit 3).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/aio_abi.h>
#include <linux/filter.h>
#include <linux/membarrier.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <setjmp.h>
#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif

static volatile sig_atomic_t finish;
static int logfd;
static const char *mode;
static char dir[4096];

#define BAD(...) do { dprintf(logfd, "BAD " __VA_ARGS__); dprintf(logfd, "\n"); exit(3); } while (0)

static void on_usr1(int s) { (void)s; finish = 1; }

static sigjmp_buf segv_jmp;
static void on_segv(int s) { (void)s; siglongjmp(segv_jmp, 1); }

/* faults reports whether reading p raises SIGSEGV. */
static int faults(volatile char *p)
{
	struct sigaction sa = {0}, old;
	sa.sa_handler = on_segv;
	sigaction(SIGSEGV, &sa, &old);
	int r = 1;
	if (!sigsetjmp(segv_jmp, 1)) {
		(void)*p;
		r = 0;
	}
	sigaction(SIGSEGV, &old, NULL);
	return r;
}

static void readfile(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		BAD("open %s: %s", path, strerror(errno));
	ssize_t k = read(fd, buf, n - 1);
	if (k < 0)
		BAD("read %s: %s", path, strerror(errno));
	buf[k] = 0;
	close(fd);
}

static uint64_t pagemap(void *p)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	uint64_t e = 0;
	if (fd < 0 || pread(fd, &e, 8, (uintptr_t)p / 4096 * 8) != 8)
		BAD("pagemap: %s", strerror(errno));
	close(fd);
	return e;
}

/* smaps_flags copies the VmFlags of the VMA at p into out. */
static void smaps_flags(void *p, char *out, size_t n)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512], want[64];
	int in = 0;
	snprintf(want, sizeof want, "%lx-", (unsigned long)p);
	out[0] = 0;
	while (fgets(line, sizeof line, f)) {
		if (!strncmp(line, want, strlen(want)))
			in = 1;
		else if (in && !strncmp(line, "VmFlags:", 8)) {
			snprintf(out, n, "%s", line + 8);
			break;
		}
	}
	fclose(f);
}

static pid_t thr_tid;
static volatile long slept, eintr;

static void *idle_thread(void *a)
{
	(void)a;
	thr_tid = gettid();
	while (!finish)
		pause();
	return NULL;
}

/* sleeper: long sleeps the dump interrupts; counts EINTRs (there is no
 * handler in this thread: nanosleep must never fail). */
static void *sleeper(void *a)
{
	(void)a;
	sigset_t m;
	sigfillset(&m);
	pthread_sigmask(SIG_BLOCK, &m, NULL);
	thr_tid = gettid();
	for (;;) {
		struct timespec ts = {2, 0};
		if (nanosleep(&ts, NULL)) {
			if (errno == EINTR)
				eintr++;
			else
				BAD("nanosleep: %s", strerror(errno));
		} else
			slept++;
		dprintf(logfd, "slept %ld eintr %ld\n", slept, eintr);
	}
	return NULL;
}

/* install: a filter returning act for syscall nr, allowing the rest. */
static long install(int nr, unsigned act, unsigned flags)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, act),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {4, f};
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static volatile int t2_go, t2_ready, t2_res = -1;

/* filtered: a thread that gets a filter of its own on top of the
 * shared one, then checks it after restore. */
static void *filtered(void *a)
{
	(void)a;
	sigset_t m;
	sigfillset(&m);
	pthread_sigmask(SIG_BLOCK, &m, NULL);
	while (!t2_go)
		usleep(1000);
	if (install(SYS_getuid, SECCOMP_RET_ERRNO | 77, 0))
		BAD("thread filter: %s", strerror(errno));
	t2_ready = 1;
	while (!finish)
		usleep(10000);
	long r = syscall(SYS_getuid);
	t2_res = r == -1 && errno == 77;
	return NULL;
}

static int fifo;
static volatile int strict_tid;

/* strict: a thread in seccomp strict mode, blocked in read. */
static void *strict(void *a)
{
	(void)a;
	sigset_t m;
	sigfillset(&m);
	pthread_sigmask(SIG_BLOCK, &m, NULL);
	strict_tid = gettid();
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT))
		BAD("strict: %s", strerror(errno));
	char c;
	if (read(fifo, &c, 1) == 1)
		write(logfd, "strict read\n", 12);
	syscall(SYS_getpid); /* strict mode ends the thread here */
	write(logfd, "BAD strict mode escaped\n", 24);
	syscall(SYS_exit_group, 3);
	return NULL;
}

/* groups: more gids than the scratch holds below the batch tables. */
#define NBIG 8250
static gid_t big[NBIG];

/*
 * bigseccomp: a filter of BIGPROG instructions (more than the scratch
 * holds below the batch tables): loads, then sethostname kills.
 */
#define BIGPROG 4000
static long install_big(void)
{
	static struct sock_filter f[BIGPROG];
	int i;
	for (i = 0; i < BIGPROG - 3; i++)
		f[i] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
	f[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sethostname, 0, 1);
	f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
	f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	struct sock_fprog prog = {BIGPROG, f};
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

static char *mem;
static char path[4200];
static aio_context_t aio;

static void setup(void)
{
	if (!strcmp(mode, "groups")) {
		for (int i = 0; i < NBIG; i++)
			big[i] = 100000 + i;
		if (setgroups(NBIG, big))
			BAD("setgroups: %s", strerror(errno));
	} else if (!strcmp(mode, "bigseccomp")) {
		if (install_big())
			BAD("seccomp: %s", strerror(errno));
	} else if (!strcmp(mode, "loginuid")) {
		int fd = open("/proc/self/loginuid", O_WRONLY);
		if (fd < 0 || write(fd, "1234", 4) != 4)
			BAD("set loginuid: %s", strerror(errno));
		close(fd);
		pthread_t th;
		pthread_create(&th, NULL, idle_thread, NULL);
		while (!thr_tid)
			usleep(1000);
	} else if (!strcmp(mode, "mapwrite")) {
		snprintf(path, sizeof path, "%s/shared", dir);
		int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		if (fd < 0 || ftruncate(fd, 4096))
			BAD("create %s: %s", path, strerror(errno));
		mem = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
		if (mem == MAP_FAILED)
			BAD("mmap: %s", strerror(errno));
		close(fd);
	} else if (!strcmp(mode, "membarrier")) {
		if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) ||
		    syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) ||
		    syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0))
			BAD("membarrier register: %s", strerror(errno));
	} else if (!strcmp(mode, "sleep")) {
		pthread_t th;
		pthread_create(&th, NULL, sleeper, NULL);
		while (!thr_tid)
			usleep(1000);
	} else if (!strcmp(mode, "cwd")) {
		snprintf(path, sizeof path, "%s/gone", dir);
		if (mkdir(path, 0750) || chdir(path) || rmdir(path))
			BAD("deleted cwd %s: %s", path, strerror(errno));
	} else if (!strcmp(mode, "guard")) {
		mem = mmap(NULL, 16 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		for (int i = 0; i < 16; i++)
			memset(mem + i * 4096, 'a' + i, 4096);
		if (madvise(mem + 4 * 4096, 2 * 4096, MADV_GUARD_INSTALL) || madvise(mem + 10 * 4096, 4096, MADV_GUARD_INSTALL))
			BAD("MADV_GUARD_INSTALL: %s", strerror(errno));
	} else if (!strcmp(mode, "droppable")) {
		mem = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_DROPPABLE | MAP_ANONYMOUS, -1, 0);
		if (mem == MAP_FAILED)
			BAD("MAP_DROPPABLE: %s", strerror(errno));
		for (int i = 0; i < 4; i++)
			memset(mem + i * 4096, 'k' + i, 4096);
	} else if (!strcmp(mode, "hugetlb")) {
		mem = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		if (mem == MAP_FAILED)
			BAD("MAP_HUGETLB: %s", strerror(errno));
		memset(mem, 'h', 4096);
		mem[1 << 20] = 'm';
		mem[(2 << 20) - 1] = 'e';
	} else if (!strcmp(mode, "aio")) {
		if (syscall(SYS_io_setup, 16, &aio))
			BAD("io_setup: %s", strerror(errno));
	} else if (!strcmp(mode, "novdso")) {
		FILE *f = fopen("/proc/self/maps", "r");
		char line[512];
		unsigned long s[8], e[8];
		int n = 0;
		while (fgets(line, sizeof line, f) && n < 8)
			if (strstr(line, "[vdso]") || strstr(line, "[vvar"))
				if (sscanf(line, "%lx-%lx", &s[n], &e[n]) == 2)
					n++;
		fclose(f);
		if (n == 0)
			BAD("no vdso to unmap");
		for (int i = 0; i < n; i++)
			if (munmap((void *)s[i], e[i] - s[i]))
				BAD("munmap vdso: %s", strerror(errno));
	} else if (!strcmp(mode, "seccomp")) {
		pthread_t t1, t2;
		pthread_create(&t1, NULL, idle_thread, NULL);
		pthread_create(&t2, NULL, filtered, NULL);
		while (!thr_tid)
			usleep(1000);
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
		    install(SYS_getppid, SECCOMP_RET_ERRNO | EACCES, SECCOMP_FILTER_FLAG_TSYNC) ||
		    install(SYS_sethostname, SECCOMP_RET_KILL_PROCESS, SECCOMP_FILTER_FLAG_TSYNC))
			BAD("filters: %s", strerror(errno));
		t2_go = 1;
		while (!t2_ready)
			usleep(1000);
	} else if (!strcmp(mode, "strict")) {
		snprintf(path, sizeof path, "%s/fifo", dir);
		if (mkfifo(path, 0600) || (fifo = open(path, O_RDWR)) < 0)
			BAD("fifo: %s", strerror(errno));
		pthread_t th;
		pthread_create(&th, NULL, strict, NULL);
		while (!strict_tid)
			usleep(1000);
		char p[64], buf[4096] = "";
		snprintf(p, sizeof p, "/proc/self/task/%d/status", strict_tid);
		for (int i = 0; i < 1000 && !strstr(buf, "Seccomp:\t1"); i++) {
			readfile(p, buf, sizeof buf);
			usleep(1000);
		}
		if (!strstr(buf, "Seccomp:\t1"))
			BAD("thread not in strict mode");
	} else
		BAD("unknown mode %s", mode);
}

static void check(void)
{
	char buf[4096];
	if (!strcmp(mode, "groups")) {
		static gid_t got[NBIG + 1];
		int n = getgroups(NBIG + 1, got);
		if (n != NBIG)
			BAD("getgroups: %d groups, want %d (%s)", n, NBIG, strerror(errno));
		for (int i = 0; i < NBIG; i++)
			if (got[i] != big[i])
				BAD("group %d is %u, want %u", i, (unsigned)got[i], (unsigned)big[i]);
	} else if (!strcmp(mode, "bigseccomp")) {
		/* the test compares the filter itself */
	} else if (!strcmp(mode, "loginuid")) {
		readfile("/proc/self/loginuid", buf, sizeof buf);
		if (strcmp(buf, "1234"))
			BAD("loginuid %s", buf);
		char p[64];
		snprintf(p, sizeof p, "/proc/self/task/%d/loginuid", (int)thr_tid);
		readfile(p, buf, sizeof buf);
		if (strcmp(buf, "1234"))
			BAD("thread loginuid %s", buf);
	} else if (!strcmp(mode, "mapwrite")) {
		if (mprotect(mem, 4096, PROT_READ | PROT_WRITE))
			BAD("mprotect writable: %s", strerror(errno));
		mem[7] = 'w';
		msync(mem, 4096, MS_SYNC);
		readfile(path, buf, 9);
		if (buf[7] != 'w')
			BAD("write through the mapping not in the file");
	} else if (!strcmp(mode, "membarrier")) {
		if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0))
			BAD("private expedited: %s", strerror(errno));
		if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0))
			BAD("private expedited rseq: %s", strerror(errno));
		if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, 0, 0) != -1 || errno != EPERM)
			BAD("sync-core registered, never asked for");
		/* MEMBARRIER_CMD_GET_REGISTRATIONS (1 << 9, Linux 6.3+; older
		 * headers lack it): the global registration too, which no
		 * command's effect shows. */
		long regs = syscall(SYS_membarrier, 1 << 9, 0, 0);
		long want = MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ |
			    MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED;
		if (regs != -1 && regs != want)
			BAD("registrations %#lx, want %#lx", regs, want);
	} else if (!strcmp(mode, "sleep")) {
		long s0 = slept;
		for (int i = 0; i < 600 && slept < s0 + 2; i++)
			usleep(10000);
		if (slept < s0 + 2)
			BAD("sleeper stuck at %ld sleeps", slept);
		if (eintr)
			BAD("nanosleep failed with EINTR %ld times", eintr);
	} else if (!strcmp(mode, "cwd")) {
		if (getcwd(buf, sizeof buf) || errno != ENOENT)
			BAD("getcwd of a deleted cwd: %s", errno ? strerror(errno) : buf);
		ssize_t n = readlink("/proc/self/cwd", buf, sizeof buf - 1);
		buf[n < 0 ? 0 : n] = 0;
		if (n < 10 || strcmp(buf + n - 10, " (deleted)"))
			BAD("cwd link %s", buf);
		struct stat st;
		if (stat(".", &st) || !S_ISDIR(st.st_mode) || st.st_nlink != 0)
			BAD("stat . : nlink %ld", (long)st.st_nlink);
		if (open("new", O_CREAT | O_WRONLY, 0600) >= 0 || errno != ENOENT)
			BAD("created a file in a deleted cwd");
	} else if (!strcmp(mode, "guard")) {
		for (int i = 0; i < 16; i++) {
			int guard = i == 4 || i == 5 || i == 10;
			if (faults(mem + i * 4096) != guard)
				BAD("page %d: guard %d expected", i, guard);
			if (!guard && (mem[i * 4096] != 'a' + i || mem[i * 4096 + 4095] != 'a' + i))
				BAD("page %d content", i);
			if (!!(pagemap(mem + i * 4096) & (1ULL << 58)) != guard)
				BAD("page %d: pagemap guard bit", i);
		}
	} else if (!strcmp(mode, "droppable")) {
		smaps_flags(mem, buf, sizeof buf);
		if (!strstr(buf, " dp"))
			BAD("not droppable: VmFlags%s", buf);
		for (int i = 0; i < 4; i++)
			if (mem[i * 4096] != 'k' + i)
				BAD("droppable page %d content", i);
	} else if (!strcmp(mode, "seccomp")) {
		if (syscall(SYS_getppid) != -1 || errno != EACCES)
			BAD("getppid not filtered");
		if (syscall(SYS_getuid) < 0)
			BAD("getuid filtered in the main thread");
		while (t2_res < 0)
			usleep(1000);
		if (!t2_res)
			BAD("the thread's own filter is gone");
		/* The shared filters are one object in every thread: a TSYNC
		 * install succeeds only then. */
		long r = install(SYS_getsid, SECCOMP_RET_ERRNO | 5, SECCOMP_FILTER_FLAG_TSYNC);
		if (r)
			BAD("TSYNC install: %ld (%s)", r, strerror(errno));
	} else if (!strcmp(mode, "strict")) {
		/* Strict mode ends the thread (only) at its getpid. */
		write(fifo, "x", 1);
		char p[64];
		snprintf(p, sizeof p, "/proc/self/task/%d", strict_tid);
		for (int i = 0; i < 2000 && !access(p, F_OK); i++)
			usleep(10000);
		if (!access(p, F_OK))
			BAD("strict thread still there");
	} else if (!strcmp(mode, "seccomp")) {
		if (syscall(SYS_getppid) != -1 || errno != EACCES)
			BAD("getppid not filtered");
		if (syscall(SYS_getuid) < 0)
			BAD("getuid filtered in the main thread");
		while (t2_res < 0)
			usleep(1000);
		if (!t2_res)
			BAD("the thread's own filter is gone");
		/* The shared filters are one object in every thread: a TSYNC
		 * install succeeds only then. */
		long r = install(SYS_getsid, SECCOMP_RET_ERRNO | 5, SECCOMP_FILTER_FLAG_TSYNC);
		if (r)
			BAD("TSYNC install: %ld (%s)", r, strerror(errno));
	} else if (!strcmp(mode, "strict")) {
		/* Strict mode ends the thread (only) at its getpid. */
		write(fifo, "x", 1);
		char p[64];
		snprintf(p, sizeof p, "/proc/self/task/%d", strict_tid);
		for (int i = 0; i < 2000 && !access(p, F_OK); i++)
			usleep(10000);
		if (!access(p, F_OK))
			BAD("strict thread still there");
	} else if (!strcmp(mode, "hugetlb")) {
		FILE *f = fopen("/proc/self/smaps", "r");
		char line[512], want[64];
		int in = 0, huge = 0;
		snprintf(want, sizeof want, "%lx-", (unsigned long)mem);
		while (fgets(line, sizeof line, f)) {
			if (!strncmp(line, want, strlen(want)))
				in = 1;
			else if (in && !strncmp(line, "KernelPageSize:", 15)) {
				huge = strstr(line, " 2048 kB") != NULL;
				break;
			}
		}
		fclose(f);
		if (!huge)
			BAD("not in 2 MiB huge pages");
		for (int i = 0; i < 4096; i++)
			if (mem[i] != 'h')
				BAD("hugetlb content at %d", i);
		if (mem[1 << 20] != 'm' || mem[(2 << 20) - 1] != 'e' || mem[8192] != 0)
			BAD("hugetlb content");
	} else if (!strcmp(mode, "novdso")) {
		FILE *f = fopen("/proc/self/maps", "r");
		char line[512];
		while (fgets(line, sizeof line, f))
			if (strstr(line, "[vdso]"))
				BAD("a vdso came back: %s", line);
		fclose(f);
		struct timespec ts;
		if (syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts))
			BAD("clock_gettime");
	}
}

int main(int argc, char **argv)
{
	if (argc != 4)
		return 2;
	mode = argv[1];
	snprintf(dir, sizeof dir, "%s", argv[2]);
	logfd = open(argv[3], O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		return 2;
	sigset_t m, old;
	sigemptyset(&m);
	sigaddset(&m, SIGUSR1);
	sigprocmask(SIG_BLOCK, &m, &old);
	struct sigaction sa = {0};
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	setup();
	dprintf(logfd, "ready %s\n", mode);
	while (!finish)
		sigsuspend(&old);
	check();
	dprintf(logfd, "done %s\n", mode);
	if (!strcmp(mode, "seccomp") || !strcmp(mode, "bigseccomp"))
		syscall(SYS_sethostname, "x", 1); /* the filter kills the process */
	return 0;
}
