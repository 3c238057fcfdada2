/*
 * fown: file owners. A stream socketpair's end at fd 40 sends its SIGIO
 * as SIGRTMIN+1 to this process (O_ASYNC, F_SETOWN_EX F_OWNER_PID,
 * F_SETSIG); a pipe's read end at fd 41 sends SIGRTMIN+2 to this
 * process group (F_SETOWN of minus the group). Ticks like counter; on
 * SIGUSR2 it writes a byte to the other end of each, waits for both
 * signals and logs what they carried and what F_GETOWN_EX, F_GETSIG and
 * F_GETFL read:
 *
 *   got 40:SIG/FD/CODE 41:SIG/FD/CODE own40=TYPE:PID own41=TYPE:PID sig40=N sig41=N async=A/A
 *
 *   fown LOG
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t trigger;
static volatile sig_atomic_t got_sig[2], got_fd[2], got_code[2];

static void die(const char *what) { dprintf(2, "fown: %s: %s\n", what, strerror(errno)); exit(2); }

static void on_usr2(int sig) { (void)sig; trigger = 1; }

static void on_io(int sig, siginfo_t *si, void *uc) {
	(void)uc;
	int i = sig == SIGRTMIN + 1 ? 0 : 1;
	got_sig[i] = sig;
	got_fd[i] = si->si_fd;
	got_code[i] = si->si_code;
}

static void setup(int fd, int at) {
	if (dup2(fd, at) < 0)
		die("dup2");
	close(fd);
}

int main(int argc, char **argv) {
	if (argc < 2)
		return 2;
	int logfd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		die("log");
	struct sigaction sa = {0};
	sa.sa_sigaction = on_io;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	if (sigaction(SIGRTMIN + 1, &sa, NULL) || sigaction(SIGRTMIN + 2, &sa, NULL))
		die("sigaction");
	signal(SIGUSR2, on_usr2);

	int sp[2], p[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) || pipe(p))
		die("socketpair/pipe");
	setup(sp[0], 40);
	setup(p[0], 41);
	if (fcntl(40, F_SETFL, O_ASYNC | O_NONBLOCK) || fcntl(41, F_SETFL, O_ASYNC | O_NONBLOCK))
		die("F_SETFL");
	struct f_owner_ex me = {F_OWNER_PID, getpid()};
	if (fcntl(40, F_SETOWN_EX, &me) || fcntl(41, F_SETOWN, -getpgrp()))
		die("F_SETOWN");
	if (fcntl(40, F_SETSIG, SIGRTMIN + 1) || fcntl(41, F_SETSIG, SIGRTMIN + 2))
		die("F_SETSIG");

	for (int tick = 1;; tick++) {
		dprintf(logfd, "tick %d\n", tick);
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
		if (!trigger)
			continue;
		trigger = 0;
		got_sig[0] = got_sig[1] = 0;
		if (write(sp[1], "x", 1) != 1 || write(p[1], "y", 1) != 1)
			die("write");
		for (int i = 0; i < 200 && !(got_sig[0] && got_sig[1]); i++) {
			struct timespec w = {0, 5 * 1000 * 1000};
			nanosleep(&w, NULL);
		}
		char c;
		while (read(40, &c, 1) == 1)
			;
		while (read(41, &c, 1) == 1)
			;
		struct f_owner_ex o40 = {0}, o41 = {0};
		fcntl(40, F_GETOWN_EX, &o40);
		fcntl(41, F_GETOWN_EX, &o41);
		dprintf(logfd, "got 40:%d/%d/%d 41:%d/%d/%d own40=%d:%d own41=%d:%d sig40=%d sig41=%d async=%d/%d\n",
			(int)got_sig[0], (int)got_fd[0], (int)got_code[0], (int)got_sig[1], (int)got_fd[1], (int)got_code[1],
			o40.type, o40.pid, o41.type, o41.pid, fcntl(40, F_GETSIG), fcntl(41, F_GETSIG),
			!!(fcntl(40, F_GETFL) & O_ASYNC), !!(fcntl(41, F_GETFL) & O_ASYNC));
	}
}
