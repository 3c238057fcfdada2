// Waits in sigsuspend with a temporary mask; exits 0 only if SIGUSR2's
// handler ran and the mask afterwards is the original one (SIGHUP only).
#include <signal.h>
#include <stdio.h>
volatile int got;
static void on_usr2(int sig) { got = 1; }
int main(void) {
	struct sigaction sa = {0};
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);
	sigset_t orig, tmp, now;
	sigemptyset(&orig);
	sigaddset(&orig, SIGHUP);
	sigprocmask(SIG_SETMASK, &orig, NULL);
	sigfillset(&tmp);
	sigdelset(&tmp, SIGUSR2);
	printf("ready\n");
	fflush(stdout);
	sigsuspend(&tmp);
	if (!got)
		return 2;
	sigprocmask(SIG_SETMASK, NULL, &now);
	if (!sigismember(&now, SIGHUP) || sigismember(&now, SIGUSR1))
		return 3;
	return 0;
}
