/* itimer: a periodic ITIMER_REAL whose SIGALRM is blocked when dumped. The
 * kernel reloads a periodic ITIMER_REAL only when its SIGALRM is dequeued,
 * so after the first expiry the timer is inactive and getitimer() reports
 * it_value 0 with a non-zero interval. A restore that re-arms it with that
 * value disarms it: the program checks that alarms keep coming once it
 * unblocks SIGALRM (on SIGUSR1). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <unistd.h>
#include <fcntl.h>

static volatile sig_atomic_t alrm, go;
static void on_alrm(int s) { (void)s; alrm++; }
static void on_usr1(int s) { (void)s; go = 1; }

int main(int argc, char **argv)
{
	int log = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0600);
	signal(SIGALRM, on_alrm);
	signal(SIGUSR1, on_usr1);
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGALRM);
	sigprocmask(SIG_BLOCK, &m, NULL);
	struct itimerval it = {{0, 20000}, {0, 20000}};
	setitimer(ITIMER_REAL, &it, NULL);
	usleep(100000); /* expired, its SIGALRM pending: not reloaded */
	getitimer(ITIMER_REAL, &it);
	dprintf(log, "ready value=%ld.%06ld interval=%ld.%06ld\n", (long)it.it_value.tv_sec, (long)it.it_value.tv_usec,
		(long)it.it_interval.tv_sec, (long)it.it_interval.tv_usec);
	while (!go)
		pause();
	sigprocmask(SIG_UNBLOCK, &m, NULL); /* the pending one, then the reloads */
	for (int i = 0; i < 30 && alrm < 3; i++)
		usleep(10000); /* each alarm cuts one short */
	if (alrm < 3) {
		dprintf(log, "BAD itimer: %d alarms in 300 ms at a 20 ms interval\n", (int)alrm);
		return 3;
	}
	dprintf(log, "done alarms=%d\n", (int)alrm);
	return 0;
}
