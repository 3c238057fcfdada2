/*
 * taskattrs: per-thread and per-process task state that a restore must
 * give back exactly: CPU affinity, timer slack, TSC and machine-check
 * policies, I/O priority (each different in the main thread and in a
 * worker thread), coredump_filter, memory-deny-write-execute and THP
 * disabled except where advised (PR_GET_THP_DISABLE reads 3).
 *
 *   taskattrs LOG
 *
 * It sets them all, then ticks ("tick N" to LOG). On SIGUSR1 each thread
 * checks its own values (and MDWE and the TSC by their effect: a W+X
 * mapping is refused, rdtsc faults) and it exits 0, or 3 after logging
 * "wrong ..." for each that differs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#endif
#ifndef PR_THP_DISABLE_EXCEPT_ADVISED
#define PR_THP_DISABLE_EXCEPT_ADVISED (1 << 1)
#endif

static FILE *lg;
static volatile sig_atomic_t finish;
static int bad;
static pthread_t worker;
static volatile int worker_done, worker_bad;

static void on_usr1(int s) { (void)s; finish = 1; }

static __thread sigjmp_buf segv_jmp;
static void on_segv(int s) { (void)s; siglongjmp(segv_jmp, 1); }

struct want {
	const char *who;
	int cpu; /* the only CPU in its affinity, -1: every CPU */
	long slack, mce, ioprio;
	int tsc;
};

static const struct want main_want = {"main", -1, 123456, PR_MCE_KILL_EARLY, (2 << 13) | 5, PR_TSC_SIGSEGV};
static const struct want worker_want = {"worker", 1, 654321, PR_MCE_KILL_LATE, (3 << 13), PR_TSC_ENABLE};

static void set_mine(const struct want *w) {
	if (w->cpu >= 0) {
		cpu_set_t c;
		CPU_ZERO(&c);
		CPU_SET(w->cpu, &c);
		if (sched_setaffinity(0, sizeof c, &c)) perror("sched_setaffinity"), exit(1);
	}
	if (prctl(PR_SET_TIMERSLACK, w->slack, 0, 0, 0)) perror("timerslack"), exit(1);
	if (prctl(PR_MCE_KILL, PR_MCE_KILL_SET, w->mce, 0, 0)) perror("mce"), exit(1);
	if (syscall(SYS_ioprio_set, 1, 0, w->ioprio)) perror("ioprio"), exit(1);
	if (prctl(PR_SET_TSC, w->tsc, 0, 0, 0)) perror("tsc"), exit(1);
}

/* check_mine logs and counts each value of the calling thread that
 * differs from w. */
static int check_mine(const struct want *w) {
	int n = 0;
	cpu_set_t c;
	sched_getaffinity(0, sizeof c, &c);
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	if (w->cpu >= 0 ? CPU_COUNT(&c) != 1 || !CPU_ISSET(w->cpu, &c) : CPU_COUNT(&c) != ncpu)
		fprintf(lg, "wrong %s affinity: %d CPUs, cpu%d %s\n", w->who, CPU_COUNT(&c), w->cpu < 0 ? 0 : w->cpu,
			CPU_ISSET(w->cpu < 0 ? 0 : w->cpu, &c) ? "in" : "out"), n++;
	long v = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
	if (v != w->slack) fprintf(lg, "wrong %s timerslack %ld, want %ld\n", w->who, v, w->slack), n++;
	v = prctl(PR_MCE_KILL_GET, 0, 0, 0, 0);
	if (v != w->mce) fprintf(lg, "wrong %s mce %ld, want %ld\n", w->who, v, w->mce), n++;
	v = syscall(SYS_ioprio_get, 1, 0);
	if (v != w->ioprio) fprintf(lg, "wrong %s ioprio %#lx, want %#lx\n", w->who, v, w->ioprio), n++;
	int tsc = 0;
	prctl(PR_GET_TSC, &tsc, 0, 0, 0);
	if (tsc != w->tsc) fprintf(lg, "wrong %s tsc %d, want %d\n", w->who, tsc, w->tsc), n++;
	int faulted = 0;
	if (sigsetjmp(segv_jmp, 1) == 0) {
		unsigned lo, hi;
		__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	} else
		faulted = 1;
	if (faulted != (w->tsc == PR_TSC_SIGSEGV)) fprintf(lg, "wrong %s rdtsc faulted=%d\n", w->who, faulted), n++;
	return n;
}

static void *work(void *a) {
	(void)a;
	set_mine(&worker_want);
	while (!finish) usleep(1000);
	worker_bad = check_mine(&worker_want);
	worker_done = 1;
	return NULL;
}

int main(int argc, char **argv) {
	if (argc < 2) return 2;
	lg = fopen(argv[argc - 1], "a");
	if (!lg) return 1;
	setvbuf(lg, NULL, _IOLBF, 0);
	signal(SIGUSR1, on_usr1);
	struct sigaction sa = {.sa_handler = on_segv};
	sigaction(SIGSEGV, &sa, NULL);
	FILE *f = fopen("/proc/self/coredump_filter", "w");
	if (!f || fprintf(f, "0x7d") < 0 || fclose(f)) perror("coredump_filter"), exit(1);
	set_mine(&main_want);
	if (pthread_create(&worker, NULL, work, NULL)) return 1;
	if (prctl(PR_SET_MDWE, 1, 0, 0, 0)) perror("mdwe"), exit(1);
	if (prctl(PR_SET_THP_DISABLE, 1, PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0)) perror("thp_disable"), exit(1);
	for (unsigned long n = 1; !finish; n++) {
		fprintf(lg, "tick %lu\n", n);
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	bad = check_mine(&main_want);
	f = fopen("/proc/self/coredump_filter", "r");
	unsigned cf = 0;
	if (!f || fscanf(f, "%x", &cf) != 1 || cf != 0x7d) fprintf(lg, "wrong coredump_filter %#x\n", cf), bad++;
	if (f) fclose(f);
	long m = prctl(PR_GET_MDWE, 0, 0, 0, 0);
	if (m != 1) fprintf(lg, "wrong mdwe %ld\n", m), bad++;
	m = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
	if (m != (1 | PR_THP_DISABLE_EXCEPT_ADVISED)) fprintf(lg, "wrong thp_disable %ld, want %d\n", m, 1 | PR_THP_DISABLE_EXCEPT_ADVISED), bad++;
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p != MAP_FAILED) fprintf(lg, "wrong mdwe: a W+X mapping was allowed\n"), bad++;
	pthread_join(worker, NULL);
	bad += worker_bad;
	fprintf(lg, "done bad=%d\n", bad);
	return bad ? 3 : 0;
}
