/*
 * seccomp: a filtered program for godwit's end-to-end tests.
 *
 *   seccomp LOG
 *
 * It makes a thread, then installs two filters in every thread at once
 * (SECCOMP_FILTER_FLAG_TSYNC, under no_new_privs): getppid fails with
 * EACCES, and sethostname kills the process (SECCOMP_RET_KILL_PROCESS).
 * It ticks ("tick N" in LOG) until SIGUSR1; then it checks that getppid
 * is still filtered in both threads, writes "checked" and calls
 * sethostname: the filter must kill it with SIGSYS (else it exits 3).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t finish;
static volatile int thread_ok = -1;
static int logfd;

static void on_usr1(int s) { (void)s; finish = 1; }

static long install(int nr, unsigned act)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, act),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {4, f};
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
}

static void *worker(void *a)
{
	(void)a;
	sigset_t m;
	sigfillset(&m);
	pthread_sigmask(SIG_BLOCK, &m, NULL);
	while (!finish)
		usleep(10000);
	thread_ok = syscall(SYS_getppid) == -1 && errno == EACCES;
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 2 || (logfd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644)) < 0)
		return 2;
	struct sigaction sa = {0};
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	pthread_t th;
	pthread_create(&th, NULL, worker, NULL);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || install(SYS_getppid, SECCOMP_RET_ERRNO | EACCES) ||
	    install(SYS_sethostname, SECCOMP_RET_KILL_PROCESS))
		return 2;
	for (long n = 1; !finish; n++) {
		dprintf(logfd, "tick %ld\n", n);
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	if (syscall(SYS_getppid) != -1 || errno != EACCES) {
		dprintf(logfd, "BAD getppid not filtered\n");
		return 3;
	}
	while (thread_ok < 0)
		usleep(1000);
	if (!thread_ok) {
		dprintf(logfd, "BAD getppid not filtered in the thread\n");
		return 3;
	}
	dprintf(logfd, "checked\n");
	syscall(SYS_sethostname, "x", 1);
	dprintf(logfd, "BAD sethostname allowed\n");
	return 3;
}
