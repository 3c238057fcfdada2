// Spins incrementing a counter; blocks SIGUSR1/SIGUSR2 so they stay queued.
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
volatile unsigned long counter;
int main(void) {
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR1);
	sigaddset(&s, SIGUSR2);
	sigprocmask(SIG_BLOCK, &s, NULL);
	printf("%p\n", (void *)&counter);
	fflush(stdout);
	for (;;)
		counter++;
}
