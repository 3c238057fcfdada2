// reaper CMD ARGS...: runs CMD as a session leader under a child
// subreaper that reaps every orphan of its tree, so that the PIDs of a
// killed tree are free again even where PID 1 never reaps (a pid namespace
// whose init is a test runner). It writes "pid N" (CMD's pid) to stdout,
// exits once CMD and every orphan are gone, and ends as CMD ended (the
// same exit code or signal).
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc < 2)
		return 2;
	if (prctl(PR_SET_CHILD_SUBREAPER, 1))
		return 2;
	pid_t p = fork();
	if (p < 0)
		return 2;
	if (p == 0) {
		setsid();
		execv(argv[1], argv + 1);
		_exit(127);
	}
	printf("pid %d\n", p);
	fflush(stdout);
	int status = 0, idle = 0;
	while (idle < 20) {
		int st;
		pid_t w = waitpid(-1, &st, 0);
		if (w == p)
			status = st;
		if (w < 0 && errno == ECHILD) {
			// Orphans may still be on their way to us.
			struct timespec ts = {0, 100000000};
			nanosleep(&ts, NULL);
			idle++;
		}
	}
	if (WIFSIGNALED(status)) {
		signal(WTERMSIG(status), SIG_DFL);
		raise(WTERMSIG(status));
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
