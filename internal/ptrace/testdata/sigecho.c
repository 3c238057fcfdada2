// Writes the number of every signal it catches (one byte each) to stdout;
// catches the legacy signals the batch trap could use and every real-time
// signal from 35 up (the trap's range), and otherwise sleeps in read(0) until EOF.
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void on(int sig) {
	unsigned char b = (unsigned char)sig;
	(void)!write(1, &b, 1);
}
int main(void) {
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on;
	sa.sa_flags = SA_RESTART;
	int legacy[] = {SIGWINCH, SIGURG, SIGUSR2, SIGUSR1, SIGPWR, SIGXFSZ};
	for (unsigned i = 0; i < sizeof legacy / sizeof legacy[0]; i++)
		sigaction(legacy[i], &sa, NULL);
	for (int s = 35; s <= SIGRTMAX; s++)
		sigaction(s, &sa, NULL);
	printf("ready\n");
	fflush(stdout);
	char c;
	while (read(0, &c, 1) > 0)
		;
	return 0;
}
