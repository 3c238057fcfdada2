/*
 * state: a workload that sets up the per-process and per-thread state the
 * restorer rebuilds, then waits. On SIGUSR1 it checks that everything is
 * still as it made it, writes "done" or "BAD <what>" to LOG and exits 0 or
 * 3.  Usage: state DIR LOG
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t finish, alrm, rt, thr_rt;
static int logfd;
static char altstack[65536];
static volatile uintptr_t on_alt;

#define BAD(...) do { dprintf(logfd, "BAD " __VA_ARGS__); dprintf(logfd, "\n"); exit(3); } while (0)

static void on_usr1(int s) { (void)s; finish = 1; }
static void on_alrm(int s) { (void)s; alrm++; }
static void on_rt(int s, siginfo_t *si, void *u)
{
	(void)s; (void)u;
	if (si->si_value.sival_int == 42)
		rt++;
	on_alt = (uintptr_t)&s;
}
static void on_thr(int s) { (void)s; thr_rt++; }

static pid_t thr_tid;
static void *thread(void *a)
{
	(void)a;
	thr_tid = gettid();
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGRTMIN + 3);
	pthread_sigmask(SIG_BLOCK, &m, NULL);
	prctl(PR_SET_NAME, "worker-x");
	setpriority(PRIO_PROCESS, 0, 7); /* this thread only (a TID) */
	while (!finish)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	logfd = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0 || chdir(argv[1]) < 0)
		return 2;
	umask(027);
	/* A file at an offset, a dir, /dev/null close-on-exec, a dup. */
	int f = open("data", O_RDWR | O_CREAT, 0600);
	if (f < 0 || write(f, "0123456789", 10) != 10 || lseek(f, 4, SEEK_SET) != 4)
		return 2;
	if (dup2(f, 40) < 0)
		return 2;
	int d = open(".", O_RDONLY | O_DIRECTORY);
	int n = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (d < 0 || n < 0)
		return 2;
	/* Shared anonymous memory, a PROT_NONE area with data, a written private file mapping. */
	char *sh = mmap(NULL, 3 << 12, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	char *pn = mmap(NULL, 2 << 12, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *fm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, f, 0);
	if (sh == MAP_FAILED || pn == MAP_FAILED || fm == MAP_FAILED)
		return 2;
	strcpy(sh + 4096, "shared page");
	/* A second view of the same shared object (mremap with old_size 0). */
	char *sh2 = mremap(sh, 0, 2 << 12, MREMAP_MAYMOVE);
	if (sh2 == MAP_FAILED)
		return 2;
	/* Touch it through the second view too: a dumper sees a shared page
	 * as present only in the mappings that have it in their page tables. */
	if (sh2[4096] != 's')
		return 2;
	strcpy(pn + 4096, "hidden page");
	mprotect(pn, 2 << 12, PROT_NONE);
	fm[0] = 'X';
	madvise(sh, 3 << 12, MADV_DONTDUMP);
	/* Signals: handlers, an alternate stack, a blocked pending signal. */
	struct sigaction sa = {0};
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_alrm;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	sa.sa_sigaction = on_rt;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigaction(SIGRTMIN + 2, &sa, NULL);
	sa.sa_handler = on_thr;
	sa.sa_flags = 0;
	sigaction(SIGRTMIN + 3, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack)};
	sigaltstack(&ss, NULL);
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGRTMIN + 2);
	sigprocmask(SIG_BLOCK, &m, NULL);
	union sigval v = {.sival_int = 42};
	sigqueue(getpid(), SIGRTMIN + 2, v); /* stays pending until SIGUSR1 */
	/* Timers: an itimer, a POSIX timer (disarmed later), one armed for far away. */
	struct itimerval it = {{0, 50000}, {0, 50000}};
	setitimer(ITIMER_REAL, &it, NULL);
	timer_t t1, t2;
	struct sigevent sev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN + 4};
	timer_create(CLOCK_MONOTONIC, &sev, &t1);
	timer_create(CLOCK_REALTIME, &sev, &t2);
	struct itimerspec its = {{0, 0}, {3600, 0}};
	timer_settime(t2, 0, &its, NULL);
	/* Limits, personality, name, pdeath signal. */
	struct rlimit rl = {1000, 2000};
	setrlimit(RLIMIT_NOFILE, &rl);
	personality(PER_LINUX | ADDR_NO_RANDOMIZE);
	prctl(PR_SET_NAME, "state-main");
	prctl(PR_SET_PDEATHSIG, SIGUSR2);
	signal(SIGUSR2, SIG_IGN);
	pthread_t th;
	pthread_create(&th, NULL, thread, NULL);
	while (!thr_tid)
		usleep(1000);
	/* A signal pending on the thread only (blocked there). */
	syscall(SYS_tgkill, getpid(), thr_tid, SIGRTMIN + 3);

	dprintf(logfd, "ready pid=%d t1=%ld t2=%ld\n", getpid(), (long)(intptr_t)t1, (long)(intptr_t)t2);
	while (!finish)
		pause();

	/* Check. */
	if (lseek(f, 0, SEEK_CUR) != 4)
		BAD("offset %ld", (long)lseek(f, 0, SEEK_CUR));
	if (lseek(40, 0, SEEK_CUR) != 4 || fcntl(40, F_GETFD) != 0)
		BAD("dup fd 40");
	if (fcntl(n, F_GETFD) != FD_CLOEXEC || fcntl(d, F_GETFD) != 0)
		BAD("cloexec");
	if (!(fcntl(logfd, F_GETFL) & O_APPEND))
		BAD("O_APPEND");
	if (strcmp(sh + 4096, "shared page") || fm[0] != 'X' || strcmp(sh2 + 4096, "shared page"))
		BAD("memory");
	sh[0] = 'S';
	if (sh2[0] != 'S')
		BAD("second view of the shared object is not shared");
	if (mprotect(pn, 2 << 12, PROT_READ) || strcmp(pn + 4096, "hidden page"))
		BAD("PROT_NONE memory");
	mode_t um = umask(0);
	if (um != 027)
		BAD("umask %o", um);
	char cwd[4096];
	if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, argv[1]))
		BAD("cwd %s", cwd);
	stack_t cur;
	sigaltstack(NULL, &cur);
	if (cur.ss_sp != altstack || cur.ss_size != sizeof(altstack))
		BAD("sigaltstack");
	getrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur != 1000 || rl.rlim_max != 2000)
		BAD("rlimit %ld %ld", (long)rl.rlim_cur, (long)rl.rlim_max);
	if (personality(0xffffffff) != (PER_LINUX | ADDR_NO_RANDOMIZE))
		BAD("personality");
	int pd = 0;
	prctl(PR_GET_PDEATHSIG, &pd);
	if (pd != SIGUSR2)
		BAD("pdeath %d", pd);
	struct itimerspec g;
	if (timer_gettime(t1, &g) || g.it_value.tv_sec || timer_gettime(t2, &g) || g.it_value.tv_sec < 3000)
		BAD("posix timers");
	int a0 = alrm;
	usleep(200000);
	if (alrm <= a0)
		BAD("itimer: %d alarms", alrm);
	sigprocmask(SIG_UNBLOCK, &m, NULL);
	if (rt != 1)
		BAD("queued rt signal: %d", rt);
	if (on_alt < (uintptr_t)altstack || on_alt >= (uintptr_t)altstack + sizeof(altstack))
		BAD("handler not on the alternate stack");
	struct sigaction o;
	sigaction(SIGPIPE, NULL, &o);
	if (o.sa_handler != SIG_IGN)
		BAD("SIGPIPE disposition");
	pthread_kill(th, SIGUSR1);
	pthread_join(th, NULL);
	if (thr_rt != 0) /* still blocked in the thread: not delivered */
		BAD("thread signal delivered early");
	dprintf(logfd, "done alarms=%d\n", (int)alrm);
	return 0;
}
