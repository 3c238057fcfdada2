/*
 * pty: holds a pty pair with state, ticks like counter, and on SIGUSR1
 * checks it and exits 0, or 3 after logging "FAIL: what".
 *
 *   pty LOG
 *
 * The parent opens a pty (packet mode on, ECHO off, VMIN 1, VEOF ^B,
 * 33x77 window of 500x600 pixels), keeps the master and a slave fd
 * (O_NONBLOCK), and forks a child that starts a session of its own whose
 * controlling terminal is the slave, with its own group in the
 * foreground. On SIGUSR1 the child checks its session, terminal and
 * foreground group, writes "hello-from-child\n" to the terminal and
 * then "hello-via-dev-tty\n" through the /dev/tty it opened at set-up
 * (the alias of its terminal), after its own child, a member of its
 * session forked once it had its terminal (so it has it too), wrote
 * "hello-from-member\n" through a /dev/tty it opens then (which only a
 * task with a controlling terminal can), and
 * exits; the parent reads both from the master (after packet mode's status
 * byte), sends "line\n" through the master and reads it from its slave
 * fd, and checks the pty's number, termios, window and packet mode.
 * The pty's number is in the log at set-up ("pts N").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static int logfd, failed;
static volatile sig_atomic_t finish;
#define FAIL(...) do { dprintf(logfd, "FAIL: " __VA_ARGS__); dprintf(logfd, "\n"); failed = 1; } while (0)
#define CHECK(cond, ...) do { if (!(cond)) FAIL(__VA_ARGS__); } while (0)

static void die(const char *what) { dprintf(2, "pty: %s: %s\n", what, strerror(errno)); exit(2); }
static void on_usr1(int sig) { (void)sig; finish = 1; }

static int master, slave, ptn;
static pid_t child;
static char slave_path[64];

static void member_main(int t)
{
	while (!finish)
		pause();
	int bad = 0;
	int d = open("/dev/tty", O_RDWR);
	if (d < 0)
		bad |= 1;
	if (tcgetsid(t) != getsid(0))
		bad |= 2;
	const char *m = "hello-from-member\n";
	if (d >= 0 && write(d, m, strlen(m)) != (ssize_t)strlen(m))
		bad |= 4;
	_exit(bad ? 20 + bad : 0);
}

static void child_main(void)
{
	signal(SIGUSR1, on_usr1);
	close(master);
	close(slave);
	if (setsid() < 0) die("setsid");
	int t = open(slave_path, O_RDWR); /* a session leader's first tty: its terminal */
	if (t < 0) die("open slave");
	if (tcsetpgrp(t, getpgrp()) < 0) die("tcsetpgrp");
	int dt = open("/dev/tty", O_RDWR);
	if (dt < 0) die("open /dev/tty");
	pid_t member = fork();
	if (member < 0) die("fork member");
	if (member == 0)
		member_main(t);
	while (!finish)
		pause();
	int bad = 0, st = -1;
	if (kill(member, SIGUSR1) < 0 || waitpid(member, &st, 0) != member || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		bad |= 32;
	/* /dev/tty opens only with a controlling terminal, and TIOCGSID
	 * answers only on one's own: t is it. */
	if (open("/dev/tty", O_RDWR) < 0)
		bad |= 1;
	if (tcgetsid(t) != getpid())
		bad |= 2;
	if (tcgetpgrp(t) != getpgrp())
		bad |= 4;
	const char *m = "hello-from-child\n";
	if (write(t, m, strlen(m)) != (ssize_t)strlen(m))
		bad |= 8;
	char p[64], l[64] = {0};
	snprintf(p, sizeof p, "/proc/self/fd/%d", dt);
	m = "hello-via-dev-tty\n";
	if (readlink(p, l, sizeof l - 1) <= 0 || strcmp(l, "/dev/tty") || write(dt, m, strlen(m)) != (ssize_t)strlen(m))
		bad |= 16;
	_exit(bad ? 10 + bad : 0);
}

static void setup(void)
{
	if ((master = posix_openpt(O_RDWR | O_NOCTTY)) < 0) die("posix_openpt");
	if (grantpt(master) < 0 || unlockpt(master) < 0) die("unlockpt");
	if (ioctl(master, TIOCGPTN, &ptn) < 0) die("TIOCGPTN");
	snprintf(slave_path, sizeof slave_path, "/dev/pts/%d", ptn);
	if ((slave = open(slave_path, O_RDWR | O_NOCTTY | O_NONBLOCK)) < 0) die("open slave");
	struct termios t;
	if (tcgetattr(slave, &t) < 0) die("tcgetattr");
	t.c_lflag &= ~(ECHO | ECHOE | ECHOK | ECHONL);
	t.c_cc[VMIN] = 1;
	t.c_cc[VEOF] = 2;
	t.c_oflag &= ~OPOST; /* bytes as written */
	cfsetspeed(&t, B9600);
	if (tcsetattr(slave, TCSANOW, &t) < 0) die("tcsetattr");
	struct winsize ws = {.ws_row = 33, .ws_col = 77, .ws_xpixel = 500, .ws_ypixel = 600};
	if (ioctl(master, TIOCSWINSZ, &ws) < 0) die("TIOCSWINSZ");
	int one = 1;
	if (ioctl(master, TIOCPKT, &one) < 0) die("TIOCPKT");
	if ((child = fork()) < 0) die("fork");
	if (child == 0)
		child_main();
	dprintf(logfd, "pts %d\n", ptn);
}

/* readall reads from fd until want is seen or 2 s pass. */
static int readall(int fd, char *buf, size_t n, const char *want)
{
	size_t got = 0;
	for (int i = 0; i < 200 && got < n - 1; i++) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 10) <= 0)
			continue;
		ssize_t r = read(fd, buf + got, n - 1 - got);
		if (r > 0)
			got += r;
		buf[got] = 0;
		if (memmem(buf, got, want, strlen(want)))
			return 1;
	}
	return 0;
}

static void check(void)
{
	int n = -1;
	CHECK(ioctl(master, TIOCGPTN, &n) == 0 && n == ptn, "master: pty %d, want %d", n, ptn);
	char p[64], l[64] = {0};
	snprintf(p, sizeof p, "/proc/self/fd/%d", slave);
	CHECK(readlink(p, l, sizeof l - 1) > 0 && !strcmp(l, slave_path), "slave: %s, want %s", l, slave_path);
	struct termios t;
	CHECK(tcgetattr(slave, &t) == 0 && !(t.c_lflag & ECHO) && (t.c_lflag & ICANON) && t.c_cc[VEOF] == 2 &&
	      t.c_cc[VMIN] == 1 && !(t.c_oflag & OPOST) && cfgetospeed(&t) == B9600, "termios: lflag %#x oflag %#x veof %d",
	      t.c_lflag, t.c_oflag, t.c_cc[VEOF]);
	struct winsize ws;
	CHECK(ioctl(slave, TIOCGWINSZ, &ws) == 0 && ws.ws_row == 33 && ws.ws_col == 77 && ws.ws_xpixel == 500 && ws.ws_ypixel == 600,
	      "window %dx%d", ws.ws_row, ws.ws_col);
	int pkt = 0;
	CHECK(ioctl(master, TIOCGPKT, &pkt) == 0 && pkt == 1, "packet mode %d", pkt);
	CHECK(fcntl(slave, F_GETFL) & O_NONBLOCK, "slave: not O_NONBLOCK");

	char buf[256];
	CHECK(write(master, "line\n", 5) == 5, "master: write");
	CHECK(readall(slave, buf, sizeof buf, "line\n") && !strcmp(buf, "line\n"), "slave: read %s", buf);

	/* Last: the child's exit hangs its terminal up. */
	int status = -1;
	CHECK(kill(child, SIGUSR1) == 0, "child: gone");
	CHECK(readall(master, buf, sizeof buf, "hello-via-dev-tty\n"), "master: the child's line through /dev/tty did not come");
	CHECK(memmem(buf, sizeof buf, "hello-from-child\n", 17), "master: the child's line did not come");
	CHECK(memmem(buf, sizeof buf, "hello-from-member\n", 18), "master: the session member's line did not come");
	CHECK(buf[0] == TIOCPKT_DATA, "master: packet mode's status byte %d", buf[0]);
	CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status %#x", status);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: pty LOG\n");
		return 2;
	}
	if ((logfd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644)) < 0) die("open log");
	signal(SIGUSR1, on_usr1);
	signal(SIGHUP, SIG_IGN);
	setup();
	unsigned long ticks = 0;
	while (!finish) {
		struct timespec ts = {0, 10000000};
		nanosleep(&ts, NULL);
		if (!finish)
			dprintf(logfd, "tick %lu\n", ++ticks);
	}
	check();
	dprintf(logfd, "done ticks=%lu %s\n", ticks, failed ? "FAILED" : "ok");
	return failed ? 3 : 0;
}
