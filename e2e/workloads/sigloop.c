/*
 * sigloop: tgkills itself, in a loop, the signals a checkpoint's injected
 * code could take for its own trap (the top real-time ones and the legacy
 * candidates). Each is blocked, sent, must then be pending, is unblocked
 * and must be caught exactly once: a send lost (merged into another
 * signal) or a signal it did not send fails it. A real-time one is sent
 * twice, with SI_QUEUE and two values (rt_tgsigqueueinfo): it must be
 * caught twice, with its siginfo (code, value, sender) and in order; a
 * legacy one is sent with tgkill and must come with SI_TKILL.
 *
 *   sigloop LOG
 *
 * Writes "tick N" to LOG every 10 ms; SIGUSR1 ends it with "sigloop ok
 * sends=N" and status 0; a fault is logged and ends it with status 1.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got[65], done;
static volatile int codes[65][2], vals[65][2], pids[65][2];

static void on(int s, siginfo_t *si, void *uc)
{
	(void)uc;
	int k = got[s];
	if (k < 2) {
		codes[s][k] = si->si_code;
		vals[s][k] = si->si_value.sival_int;
		pids[s][k] = si->si_pid;
	}
	got[s]++;
}
static void on_usr1(int s) { (void)s; done = 1; }

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: sigloop LOG\n");
		return 2;
	}
	int logfd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (logfd < 0) {
		perror(argv[1]);
		return 2;
	}
	int sigs[] = {SIGRTMAX, SIGRTMAX - 1, SIGRTMAX - 2, 35, SIGWINCH, SIGURG, SIGUSR2, SIGPWR};
	int n = sizeof sigs / sizeof sigs[0];
	struct sigaction sa = {0};
	sa.sa_sigaction = on;
	sa.sa_flags = SA_RESTART | SA_SIGINFO;
	for (int i = 0; i < n; i++)
		sigaction(sigs[i], &sa, NULL);
	sa.sa_flags = SA_RESTART;
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	pid_t pid = getpid(), tid = (pid_t)syscall(SYS_gettid);
	unsigned long sends = 0, ticks = 0;
	int64_t next = now_ns();
	while (!done) {
		int s = sigs[sends % n];
		sigset_t one, pend;
		sigemptyset(&one);
		sigaddset(&one, s);
		sigprocmask(SIG_BLOCK, &one, NULL);
		int rt = s >= SIGRTMIN, want = rt ? 2 : 1;
		got[s] = 0;
		if (rt) {
			for (int k = 0; k < 2; k++) {
				siginfo_t si = {0};
				si.si_signo = s;
				si.si_code = SI_QUEUE;
				si.si_pid = pid;
				si.si_uid = getuid();
				si.si_value.sival_int = (int)(2 * sends + k);
				syscall(SYS_rt_tgsigqueueinfo, pid, tid, s, &si);
			}
		} else {
			syscall(SYS_tgkill, pid, tid, s);
		}
		sigpending(&pend);
		if (!sigismember(&pend, s)) {
			dprintf(logfd, "lost sig=%d sends=%lu\n", s, sends);
			return 1;
		}
		sigprocmask(SIG_UNBLOCK, &one, NULL);
		if (got[s] != want) {
			dprintf(logfd, "caught sig=%d %d times sends=%lu\n", s, (int)got[s], sends);
			return 1;
		}
		for (int k = 0; k < want; k++) {
			int code = rt ? SI_QUEUE : SI_TKILL, val = rt ? (int)(2 * sends + k) : vals[s][k];
			if (codes[s][k] != code || vals[s][k] != val || pids[s][k] != pid) {
				dprintf(logfd, "caught sig=%d #%d with siginfo code=%d value=%d pid=%d, sent code=%d value=%d pid=%d sends=%lu\n",
					s, k, codes[s][k], vals[s][k], pids[s][k], code, val, (int)pid, sends);
				return 1;
			}
		}
		sends++;
		if (now_ns() >= next) {
			dprintf(logfd, "tick %lu\n", ++ticks);
			next += 10000000;
		}
	}
	dprintf(logfd, "sigloop ok sends=%lu\n", sends);
	return 0;
}
