/*
 * thrns: a process whose second thread (not the leader) unshares a
 * namespace of its own, which /proc/PID/ns does not show.
 *
 *   thrns uts|net LOG
 *
 * The worker thread unshares the namespace (uts: and sets the hostname
 * "inner"), then the main thread ticks ("tick N" to LOG) until killed.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int flag;
static volatile int ready;

static void *work(void *a) {
	(void)a;
	if (unshare(flag)) perror("unshare"), _exit(1);
	if (flag == CLONE_NEWUTS && sethostname("inner", 5)) perror("sethostname"), _exit(1);
	ready = 1;
	for (;;) pause();
	return NULL;
}

int main(int argc, char **argv) {
	if (argc < 3) return 2;
	flag = !strcmp(argv[1], "net") ? CLONE_NEWNET : CLONE_NEWUTS;
	FILE *lg = fopen(argv[argc - 1], "a");
	if (!lg) return 1;
	setvbuf(lg, NULL, _IOLBF, 0);
	pthread_t t;
	if (pthread_create(&t, NULL, work, NULL)) return 1;
	while (!ready) usleep(1000);
	for (unsigned long n = 1;; n++) {
		fprintf(lg, "tick %lu\n", n);
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}
