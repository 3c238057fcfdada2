// A 200 µs interval timer whose SIGALRM handler counts; the main thread
// spins. Signals keep arriving while we freeze and inject.
#include <signal.h>
#include <stdio.h>
#include <sys/time.h>
volatile unsigned long hits;
static void on_alarm(int sig) { hits++; }
int main(void) {
	struct sigaction sa = {0};
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	struct itimerval it = {{0, 200}, {0, 200}};
	setitimer(ITIMER_REAL, &it, NULL);
	printf("%p\n", (void *)&hits);
	fflush(stdout);
	for (;;)
		;
}
