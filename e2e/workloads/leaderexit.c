/*
 * leaderexit LOG: a live process whose main thread has exited
 * (pthread_exit in main): a second thread ticks ("tick N" to LOG) on.
 */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

static FILE *lg;

static void *tick(void *a) {
	(void)a;
	for (unsigned long n = 1;; n++) {
		fprintf(lg, "tick %lu\n", n);
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return NULL;
}

int main(int argc, char **argv) {
	if (argc < 2) return 2;
	lg = fopen(argv[argc - 1], "a");
	if (!lg) return 1;
	setvbuf(lg, NULL, _IOLBF, 0);
	pthread_t t;
	if (pthread_create(&t, NULL, tick, NULL)) return 1;
	pthread_exit(NULL);
}
