/*
 * fdkinds: holds one of every fd kind godwit restores, with state in each,
 * ticks like counter, and on SIGUSR1 checks every object and exits 0, or
 * 3 after logging "FAIL: what" for each object that is wrong.
 *
 *   fdkinds LOG
 *
 * Nothing is read or changed between the set-up and SIGUSR1, so the same
 * checks pass in the original (after a dump that left it running: the
 * dump must not have consumed anything) and in a restored copy.
 *
 *  pipe_both   both ends, 128 KiB, "both-ends" queued, read end O_NONBLOCK,
 *              its read end dup'ed (one description: flags shared)
 *  pipe_ronly  read end only, "read-only" queued, then EOF
 *  pipe_wonly  write end only: writing fails with EPIPE
 *  efd_sem     eventfd, counter 7, semaphore, non-blocking
 *  efd_big     eventfd, counter 2^32+5
 *  sfd         signalfd on SIGWINCH (blocked, one pending)
 *  tfd_long    monotonic, 3600 s left, 7 s interval
 *  tfd_fired   one-shot that expired (1 unread expiration)
 *  tfd_tick    periodic, 20 ms: still fires after the restore
 *  ep          epoll: pipe_both's read end (IN, LT), efd_sem (IN|ET),
 *              tfd_fired (IN); ep2 watches ep
 *  pipe_child  read end; a child holds the write end and wrote "child"
 *              into it, and holds the read end of pipe_up, whose
 *              write end is ours (the ends of one pipe in two tasks);
 *              sk_child: a stream socketpair with the child, "hi-parent"
 *              and "hi-child" queued at each end
 *  fifo_r/w    LOG.fifo: a reader (O_NONBLOCK) and a writer, "fifo-data"
 *              queued
 *  fifo_wonly  LOG.fifo2: a writer alone, "w-only" queued
 *  sp_s        stream socketpair: "to-1" and "to-0" queued, [0] shut for
 *              writing, [1] has SO_RCVTIMEO 3 s and SO_SNDBUF 100000
 *  sp_d        datagram socketpair: "a", "bb", "ccc" queued for [1]
 *  sp_q        seqpacket socketpair: "p1", "p22" queued for [0]
 *  lis_abs     stream listener on an abstract name, backlog 5
 *  lis_path    seqpacket listener on LOG.sock, mode 0640
 *  dg_bound    datagram socket on an abstract name, nothing queued
 *  ghost_a/b   LOG.ghost, deleted: "ghost-data", mode 0604; two opens,
 *              ghost_b read-only at offset 2
 *  ify         inotify: watch 2 on LOG.d (IN_CREATE), watch 3 on LOG.f
 *              (IN_MODIFY | IN_ONESHOT); watch 1 was removed
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t finish;
static int logfd, failed;

static void on_usr1(int sig) { (void)sig; finish = 1; }

#define FAIL(...) do { dprintf(logfd, "FAIL: " __VA_ARGS__); dprintf(logfd, "\n"); failed = 1; } while (0)
#define CHECK(cond, ...) do { if (!(cond)) FAIL(__VA_ARGS__); } while (0)

static void die(const char *what) { dprintf(2, "fdkinds: %s: %s\n", what, strerror(errno)); exit(2); }

static int pipe_both[2], pipe_both_dup, pipe_ronly, pipe_wonly;
static int efd_sem, efd_big, sfd, tfd_long, tfd_fired, tfd_tick, ep, ep2;
static int sk_child, pipe_child, pipe_up, fifo_r, fifo_w, fifo_wonly;
static char fifo2[4096];
static int sp_s[2], sp_d[2], sp_q[2], lis_abs, lis_path, dg_bound;
static struct sockaddr_un abs_addr, path_addr, dg_addr;
static socklen_t abs_len, dg_len;
static int ghost_a, ghost_b, ify;
static char ify_dir[4096], ify_file[4096];
static char ghost[4096];
static pid_t child;

#define FLMASK (O_ACCMODE | O_NONBLOCK | O_APPEND)

static void setup(const char *log)
{
	char fifo[4096];
	snprintf(fifo, sizeof fifo, "%s.fifo", log);
	snprintf(fifo2, sizeof fifo2, "%s.fifo2", log);
	if (mkfifo(fifo, 0600) < 0 || mkfifo(fifo2, 0600) < 0) die("mkfifo");
	if ((fifo_r = open(fifo, O_RDONLY | O_NONBLOCK)) < 0) die("open fifo");
	if ((fifo_w = open(fifo, O_WRONLY)) < 0) die("open fifo");
	if (write(fifo_w, "fifo-data", 9) != 9) die("write fifo");
	int tmp = open(fifo2, O_RDONLY | O_NONBLOCK);
	if (tmp < 0 || (fifo_wonly = open(fifo2, O_WRONLY)) < 0) die("open fifo2");
	if (write(fifo_wonly, "w-only", 6) != 6) die("write fifo2");
	close(tmp);

	snprintf(ify_dir, sizeof ify_dir, "%s.d", log);
	snprintf(ify_file, sizeof ify_file, "%s.f", log);
	if (mkdir(ify_dir, 0700) < 0 || close(open(ify_file, O_CREAT | O_WRONLY, 0600)) < 0) die("inotify files");
	if ((ify = inotify_init1(IN_NONBLOCK)) < 0) die("inotify_init1");
	int w1 = inotify_add_watch(ify, ify_file, IN_ACCESS);
	if (w1 != 1 || inotify_add_watch(ify, ify_dir, IN_CREATE) != 2 || inotify_rm_watch(ify, w1) < 0 ||
	    inotify_add_watch(ify, ify_file, IN_MODIFY | IN_ONESHOT) != 3) die("inotify watches");
	char ib[4096];
	while (read(ify, ib, sizeof ib) > 0) /* the IN_IGNORED of watch 1 */
		;
	snprintf(ghost, sizeof ghost, "%s.ghost", log);
	if ((ghost_a = open(ghost, O_RDWR | O_CREAT | O_EXCL, 0600)) < 0 || write(ghost_a, "ghost-data", 10) != 10 ||
	    fchmod(ghost_a, 0604) < 0 || (ghost_b = open(ghost, O_RDONLY)) < 0 || lseek(ghost_b, 2, SEEK_SET) != 2 ||
	    unlink(ghost) < 0) die("ghost");
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp_s) < 0) die("socketpair");
	if (write(sp_s[0], "to-1", 4) != 4 || write(sp_s[1], "to-0", 4) != 4) die("write sp_s");
	if (shutdown(sp_s[0], SHUT_WR) < 0) die("shutdown");
	struct timeval tv = {3, 0};
	int sndbuf = 50000;
	if (setsockopt(sp_s[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
	    setsockopt(sp_s[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) < 0) die("setsockopt");
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sp_d) < 0) die("socketpair");
	if (send(sp_d[0], "a", 1, 0) != 1 || send(sp_d[0], "bb", 2, 0) != 2 || send(sp_d[0], "ccc", 3, 0) != 3) die("send sp_d");
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp_q) < 0) die("socketpair");
	if (send(sp_q[1], "p1", 2, 0) != 2 || send(sp_q[1], "p22", 3, 0) != 3) die("send sp_q");

	abs_addr.sun_family = AF_UNIX;
	abs_len = offsetof(struct sockaddr_un, sun_path) + 1 +
		  snprintf(abs_addr.sun_path + 1, sizeof abs_addr.sun_path - 1, "godwit-fdkinds-%d", getpid());
	if ((lis_abs = socket(AF_UNIX, SOCK_STREAM, 0)) < 0 || bind(lis_abs, (struct sockaddr *)&abs_addr, abs_len) < 0 ||
	    listen(lis_abs, 5) < 0) die("listen abstract");
	path_addr.sun_family = AF_UNIX;
	snprintf(path_addr.sun_path, sizeof path_addr.sun_path, "%s.sock", log);
	if ((lis_path = socket(AF_UNIX, SOCK_SEQPACKET, 0)) < 0 || bind(lis_path, (struct sockaddr *)&path_addr, sizeof path_addr) < 0 ||
	    chmod(path_addr.sun_path, 0640) < 0 || listen(lis_path, 3) < 0) die("listen path");
	dg_addr.sun_family = AF_UNIX;
	dg_len = offsetof(struct sockaddr_un, sun_path) + 1 +
		 snprintf(dg_addr.sun_path + 1, sizeof dg_addr.sun_path - 1, "godwit-fdkinds-dg-%d", getpid());
	if ((dg_bound = socket(AF_UNIX, SOCK_DGRAM, 0)) < 0 || bind(dg_bound, (struct sockaddr *)&dg_addr, dg_len) < 0) die("bind dgram");

	int p[2], up[2], sk[2];
	if (pipe(p) < 0 || pipe(up) < 0) die("pipe");
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sk) < 0) die("socketpair");
	if ((child = fork()) < 0) die("fork");
	if (child == 0) {
		/* Holds p's write end and up's read end; echoes one byte
		 * from up back into p, then waits to be killed. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(p[0]);
		close(up[1]);
		close(sk[0]);
		if (write(p[1], "child", 5) != 5 || write(sk[1], "hi-parent", 9) != 9) die("write");
		char b[64];
		if (read(up[0], b, 1) == 1) {
			/* what the parent queued on the socket before the dump */
			ssize_t n = recv(sk[1], b + 1, sizeof b - 1, MSG_DONTWAIT);
			if (write(p[1], b, 1 + (n > 0 ? n : 0)) < 0) die("write");
		}
		for (;;)
			pause();
	}
	close(p[1]);
	close(up[0]);
	close(sk[1]);
	sk_child = sk[0];
	if (write(sk_child, "hi-child", 8) != 8) die("write");
	pipe_child = p[0];
	pipe_up = up[1];
	if (pipe(pipe_both) < 0) die("pipe");
	if (fcntl(pipe_both[1], F_SETPIPE_SZ, 128 << 10) < 0) die("F_SETPIPE_SZ");
	if (fcntl(pipe_both[0], F_SETFL, O_NONBLOCK) < 0) die("F_SETFL");
	if (write(pipe_both[1], "both-ends", 9) != 9) die("write");
	if ((pipe_both_dup = dup(pipe_both[0])) < 0) die("dup");

	if (pipe(p) < 0) die("pipe");
	if (write(p[1], "read-only", 9) != 9) die("write");
	close(p[1]);
	pipe_ronly = p[0];

	if (pipe(p) < 0) die("pipe");
	close(p[0]);
	pipe_wonly = p[1];
	signal(SIGPIPE, SIG_IGN);

	if ((efd_sem = eventfd(7, EFD_SEMAPHORE | EFD_NONBLOCK)) < 0) die("eventfd");
	if ((efd_big = eventfd(0, EFD_CLOEXEC)) < 0) die("eventfd");
	uint64_t big = (1ULL << 32) + 5;
	if (write(efd_big, &big, 8) != 8) die("write eventfd");

	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGWINCH);
	if (sigprocmask(SIG_BLOCK, &m, NULL) < 0) die("sigprocmask");
	if ((sfd = signalfd(-1, &m, SFD_NONBLOCK)) < 0) die("signalfd");
	kill(getpid(), SIGWINCH);

	struct itimerspec its = {.it_value = {3600, 0}, .it_interval = {7, 0}};
	if ((tfd_long = timerfd_create(CLOCK_MONOTONIC, 0)) < 0) die("timerfd_create");
	if (timerfd_settime(tfd_long, 0, &its, NULL) < 0) die("timerfd_settime");
	struct itimerspec once = {.it_value = {0, 1000000}};
	if ((tfd_fired = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK)) < 0) die("timerfd_create");
	if (timerfd_settime(tfd_fired, 0, &once, NULL) < 0) die("timerfd_settime");
	struct itimerspec tick = {.it_value = {0, 20000000}, .it_interval = {0, 20000000}};
	if ((tfd_tick = timerfd_create(CLOCK_MONOTONIC, 0)) < 0) die("timerfd_create");
	if (timerfd_settime(tfd_tick, 0, &tick, NULL) < 0) die("timerfd_settime");

	if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0) die("epoll_create1");
	struct epoll_event e = {.events = EPOLLIN, .data.u64 = 0xA11CE};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, pipe_both[0], &e) < 0) die("epoll_ctl");
	e = (struct epoll_event){.events = EPOLLIN | EPOLLET, .data.u64 = 0xE1};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, efd_sem, &e) < 0) die("epoll_ctl");
	e = (struct epoll_event){.events = EPOLLIN, .data.u64 = 0x73};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd_fired, &e) < 0) die("epoll_ctl");
	if ((ep2 = epoll_create1(0)) < 0) die("epoll_create1");
	e = (struct epoll_event){.events = EPOLLIN, .data.u64 = 0xEE};
	if (epoll_ctl(ep2, EPOLL_CTL_ADD, ep, &e) < 0) die("epoll_ctl");
	usleep(20000); /* tfd_fired expires */
}

static void check_read(int fd, const char *want, const char *what)
{
	char buf[64] = {0};
	ssize_t n = read(fd, buf, sizeof buf - 1);
	CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, n) == 0, "%s: read %zd bytes %.*s, want %s", what, n, (int)(n > 0 ? n : 0), buf, want);
}

static void check(void)
{
	/* pipes */
	CHECK(fcntl(pipe_both[1], F_GETPIPE_SZ) == 128 << 10, "pipe_both: size %d", fcntl(pipe_both[1], F_GETPIPE_SZ));
	CHECK(fcntl(pipe_both[0], F_GETFL) & O_NONBLOCK, "pipe_both: read end lost O_NONBLOCK");
	CHECK(!(fcntl(pipe_both[1], F_GETFL) & O_NONBLOCK), "pipe_both: write end became O_NONBLOCK");
	fcntl(pipe_both_dup, F_SETFL, 0);
	CHECK(!(fcntl(pipe_both[0], F_GETFL) & O_NONBLOCK), "pipe_both: dup'ed fd is not the same description");
	fcntl(pipe_both[0], F_SETFL, O_NONBLOCK);
	check_read(pipe_both[0], "both-ends", "pipe_both");
	CHECK(write(pipe_both[1], "x", 1) == 1, "pipe_both: write: %s", strerror(errno));
	check_read(pipe_both_dup, "x", "pipe_both dup");
	check_read(pipe_ronly, "read-only", "pipe_ronly");
	char c;
	CHECK(read(pipe_ronly, &c, 1) == 0, "pipe_ronly: a writer exists");
	CHECK(write(pipe_wonly, "x", 1) < 0 && errno == EPIPE, "pipe_wonly: write did not fail with EPIPE");

	/* FIFOs */
	CHECK((fcntl(fifo_r, F_GETFL) & FLMASK) == (O_RDONLY | O_NONBLOCK), "fifo_r: flags %o", fcntl(fifo_r, F_GETFL));
	CHECK((fcntl(fifo_w, F_GETFL) & FLMASK) == O_WRONLY, "fifo_w: flags %o", fcntl(fifo_w, F_GETFL));
	check_read(fifo_r, "fifo-data", "fifo_r");
	CHECK((fcntl(fifo_wonly, F_GETFL) & FLMASK) == O_WRONLY, "fifo_wonly: flags %o", fcntl(fifo_wonly, F_GETFL));
	int r2 = open(fifo2, O_RDONLY | O_NONBLOCK);
	CHECK(r2 >= 0, "fifo2: open: %s", strerror(errno));
	check_read(r2, "w-only", "fifo_wonly");
	close(r2);

	/* inotify */
	{
		char ib[4096] __attribute__((aligned(8)));
		CHECK(read(ify, ib, sizeof ib) < 0 && errno == EAGAIN, "ify: events pending after restore");
		char p[4200];
		snprintf(p, sizeof p, "%s/new", ify_dir);
		close(open(p, O_CREAT | O_WRONLY, 0600));
		int fw = open(ify_file, O_WRONLY);
		CHECK(write(fw, "m", 1) == 1, "ify: write");
		CHECK(write(fw, "m", 1) == 1, "ify: write");
		close(fw);
		ssize_t n = read(ify, ib, sizeof ib);
		int created = 0, modified = 0, ignored = 0, other = 0;
		for (char *q = ib; n > 0 && q < ib + n;) {
			struct inotify_event *ev = (struct inotify_event *)q;
			if (ev->wd == 2 && (ev->mask & IN_CREATE) && strcmp(ev->name, "new") == 0)
				created++;
			else if (ev->wd == 3 && (ev->mask & IN_MODIFY))
				modified++;
			else if (ev->wd == 3 && (ev->mask & IN_IGNORED))
				ignored++;
			else
				other++;
			q += sizeof *ev + ev->len;
		}
		CHECK(created == 1 && modified == 1 && ignored == 1 && other == 0,
		      "ify: events created %d modified %d (one-shot) ignored %d other %d", created, modified, ignored, other);
	}

	/* the deleted file */
	struct stat gst;
	CHECK(fstat(ghost_a, &gst) == 0 && gst.st_nlink == 0 && gst.st_size == 10 && (gst.st_mode & 07777) == 0604,
	      "ghost: nlink %lu size %ld mode %o", (unsigned long)gst.st_nlink, (long)gst.st_size, gst.st_mode);
	struct stat gst2;
	CHECK(fstat(ghost_b, &gst2) == 0 && gst2.st_ino == gst.st_ino && gst2.st_dev == gst.st_dev, "ghost: two inodes");
	check_read(ghost_b, "ost-data", "ghost_b");
	CHECK(lseek(ghost_a, 0, SEEK_CUR) == 10, "ghost_a: offset %ld", (long)lseek(ghost_a, 0, SEEK_CUR));
	CHECK(pwrite(ghost_a, "G", 1, 0) == 1, "ghost_a: write");
	char gb[2] = {0};
	CHECK(pread(ghost_b, gb, 1, 0) == 1 && gb[0] == 'G', "ghost: a write through one fd is not seen through the other");
	char link[4200], want[4200];
	snprintf(link, sizeof link, "/proc/self/fd/%d", ghost_a);
	ssize_t ll = readlink(link, want, sizeof want - 1);
	want[ll > 0 ? ll : 0] = 0;
	char expect[4200];
	snprintf(expect, sizeof expect, "%s (deleted)", ghost);
	CHECK(strcmp(want, expect) == 0, "ghost: fd names %s, want %s", want, expect);
	CHECK(access(ghost, F_OK) < 0, "ghost: its name exists again");

	/* unix sockets */
	check_read(sp_s[1], "to-1", "sp_s[1]");
	char c1;
	CHECK(read(sp_s[1], &c1, 1) == 0, "sp_s[1]: no EOF after the peer's shutdown");
	check_read(sp_s[0], "to-0", "sp_s[0]");
	CHECK(write(sp_s[0], "x", 1) < 0 && errno == EPIPE, "sp_s[0]: write after shutdown did not fail with EPIPE");
	struct timeval tv;
	socklen_t tl = sizeof tv;
	CHECK(getsockopt(sp_s[1], SOL_SOCKET, SO_RCVTIMEO, &tv, &tl) == 0 && tv.tv_sec == 3 && tv.tv_usec == 0, "sp_s[1]: SO_RCVTIMEO %ld", (long)tv.tv_sec);
	int sb = 0;
	tl = sizeof sb;
	CHECK(getsockopt(sp_s[1], SOL_SOCKET, SO_SNDBUF, &sb, &tl) == 0 && sb == 100000, "sp_s[1]: SO_SNDBUF %d", sb);
	check_read(sp_d[1], "a", "sp_d 1");
	check_read(sp_d[1], "bb", "sp_d 2");
	check_read(sp_d[1], "ccc", "sp_d 3");
	CHECK(recv(sp_d[1], &c1, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "sp_d: more queued");
	CHECK(send(sp_d[1], "back", 4, 0) == 4, "sp_d: send back");
	check_read(sp_d[0], "back", "sp_d back");
	check_read(sp_q[0], "p1", "sp_q 1");
	check_read(sp_q[0], "p22", "sp_q 2");
	int cs = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(connect(cs, (struct sockaddr *)&abs_addr, abs_len) == 0, "lis_abs: connect: %s", strerror(errno));
	int a = accept(lis_abs, NULL, NULL);
	CHECK(a >= 0 && write(cs, "hi", 2) == 2, "lis_abs: accept: %s", strerror(errno));
	check_read(a, "hi", "lis_abs accepted");
	close(a);
	close(cs);
	struct stat sst;
	CHECK(stat(path_addr.sun_path, &sst) == 0 && S_ISSOCK(sst.st_mode) && (sst.st_mode & 0777) == 0640, "lis_path: socket file mode %o", sst.st_mode);
	cs = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	CHECK(connect(cs, (struct sockaddr *)&path_addr, sizeof path_addr) == 0, "lis_path: connect: %s", strerror(errno));
	a = accept(lis_path, NULL, NULL);
	CHECK(a >= 0, "lis_path: accept: %s", strerror(errno));
	close(a);
	close(cs);
	cs = socket(AF_UNIX, SOCK_DGRAM, 0);
	CHECK(sendto(cs, "dg", 2, 0, (struct sockaddr *)&dg_addr, dg_len) == 2, "dg_bound: sendto: %s", strerror(errno));
	check_read(dg_bound, "dg", "dg_bound");
	close(cs);

	/* the pipes shared with the child, in both directions */
	check_read(pipe_child, "child", "pipe_child");
	check_read(sk_child, "hi-parent", "sk_child (queued by the child)");
	CHECK(write(pipe_up, "!", 1) == 1, "pipe_up: write: %s", strerror(errno));
	check_read(pipe_child, "!hi-child", "pipe_child echo (with what the child's socket end had queued)");
	kill(child, SIGKILL);
	CHECK(waitpid(child, NULL, 0) == child, "child: not ours");

	/* epoll, before the reads below change readiness */
	struct epoll_event evs[8];
	int n = epoll_wait(ep2, evs, 8, 0);
	CHECK(n == 1 && evs[0].data.u64 == 0xEE, "ep2: %d events (data %llx), want ep ready", n, n > 0 ? (unsigned long long)evs[0].data.u64 : 0ULL);

	/* eventfds */
	uint64_t v = 0;
	CHECK(fcntl(efd_sem, F_GETFL) & O_NONBLOCK, "efd_sem: lost O_NONBLOCK");
	for (int i = 0; i < 7; i++) {
		v = 0;
		CHECK(read(efd_sem, &v, 8) == 8 && v == 1, "efd_sem: read %d gave %llu, want 1 (semaphore)", i, (unsigned long long)v);
	}
	CHECK(read(efd_sem, &v, 8) < 0 && errno == EAGAIN, "efd_sem: counter above 7");
	CHECK(read(efd_big, &v, 8) == 8 && v == (1ULL << 32) + 5, "efd_big: counter %llu", (unsigned long long)v);
	CHECK(fcntl(efd_big, F_GETFD) & FD_CLOEXEC, "efd_big: lost close-on-exec");

	/* signalfd */
	struct signalfd_siginfo si;
	CHECK(read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGWINCH, "sfd: no pending SIGWINCH");
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGWINCH);
	kill(getpid(), SIGWINCH);
	CHECK(read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGWINCH, "sfd: mask lost SIGWINCH");
	CHECK(read(sfd, &si, sizeof si) < 0 && errno == EAGAIN, "sfd: lost O_NONBLOCK or extra signal");

	/* timerfds */
	struct itimerspec cur;
	CHECK(timerfd_gettime(tfd_long, &cur) == 0 && cur.it_interval.tv_sec == 7 && cur.it_interval.tv_nsec == 0 &&
	      cur.it_value.tv_sec > 3000 && cur.it_value.tv_sec < 3600,
	      "tfd_long: interval %ld.%09ld left %ld", (long)cur.it_interval.tv_sec, cur.it_interval.tv_nsec, (long)cur.it_value.tv_sec);
	v = 0;
	CHECK(read(tfd_fired, &v, 8) == 8 && v == 1, "tfd_fired: %llu expirations, want 1", (unsigned long long)v);
	CHECK(read(tfd_fired, &v, 8) < 0 && errno == EAGAIN, "tfd_fired: rearmed or lost O_NONBLOCK");
	v = 0;
	CHECK(read(tfd_tick, &v, 8) == 8 && v >= 1, "tfd_tick: does not fire");
	v = 0;
	CHECK(read(tfd_tick, &v, 8) == 8 && v >= 1, "tfd_tick: does not fire again");

	/* epoll: after the reads above only the pipe (the "x" is gone too:
	 * write another) is ready */
	CHECK(write(pipe_both[1], "y", 1) == 1, "pipe_both: write");
	n = epoll_wait(ep, evs, 8, 0);
	CHECK(n == 1 && evs[0].data.u64 == 0xA11CE && evs[0].events == EPOLLIN, "ep: %d events, want the pipe alone", n);
	uint64_t one = 1;
	CHECK(write(efd_sem, &one, 8) == 8, "efd_sem: write");
	n = epoll_wait(ep, evs, 8, 0);
	int sawE1 = 0;
	for (int i = 0; i < n; i++)
		sawE1 |= evs[i].data.u64 == 0xE1;
	CHECK(sawE1, "ep: eventfd edge not reported");
	check_read(pipe_both[0], "y", "pipe_both");
	struct itimerspec once = {.it_value = {0, 1000000}};
	timerfd_settime(tfd_fired, 0, &once, NULL);
	n = epoll_wait(ep, evs, 8, 1000);
	int sawT = 0;
	for (int i = 0; i < n; i++)
		sawT |= evs[i].data.u64 == 0x73;
	CHECK(sawT, "ep: timerfd not reported");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: fdkinds LOG\n");
		return 2;
	}
	if ((logfd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644)) < 0) die("open log");
	signal(SIGUSR1, on_usr1);
	setup(argv[1]);
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
