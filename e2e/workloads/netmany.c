/*
 * netmany: holds N established TCP connections, for the connection-count
 * benchmark.
 *
 *   netmany ADDR PORT N LOG
 *
 * Connects N times to ADDR:PORT (raising its open-file limit to the hard
 * one), logs "ready", then "tick N" every 10 ms. On SIGUSR1 it writes one
 * byte on every connection and exits 0 if every write succeeded.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t finish;
static void on_usr1(int s) { (void)s; finish = 1; }

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: netmany ADDR PORT N LOG\n");
		return 2;
	}
	int n = atoi(argv[3]);
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	FILE *logf = fopen(argv[4], "w");
	if (!logf)
		return 2;
	setvbuf(logf, NULL, _IOLBF, 0);
	signal(SIGUSR1, on_usr1);
	signal(SIGPIPE, SIG_IGN);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
	inet_pton(AF_INET, argv[1], &sa.sin_addr);
	int *fds = calloc(n, sizeof(int));
	for (int i = 0; i < n; i++) {
		fds[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (fds[i] < 0 || connect(fds[i], (void *)&sa, sizeof(sa))) {
			fprintf(logf, "FAIL: connection %d: %m\n", i);
			return 2;
		}
	}
	fprintf(logf, "ready\n");
	for (int tick = 1;; tick++) {
		if (finish) {
			int bad = 0;
			for (int i = 0; i < n; i++)
				if (write(fds[i], "x", 1) != 1)
					bad++;
			fprintf(logf, "done bad=%d\n", bad);
			return bad ? 3 : 0;
		}
		fprintf(logf, "tick %d\n", tick);
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}
