/*
 * fdfiles: holds the file fds whose state is easy to lose, ticks like
 * counter, and on SIGUSR1 checks each and exits 0, or 3 after logging
 * "FAIL: what" for each that is wrong.
 *
 *   fdfiles LOG
 *
 * Nothing is read or changed between the set-up and SIGUSR1, so the same
 * checks pass in the original (after dump -R) and in a restored copy.
 *
 *  tmp_glibc  glibc's tmpfile(): "tmp-data", offset 2 (O_TMPFILE|O_EXCL:
 *             not linkable)
 *  tmp_sparse O_TMPFILE|O_RDWR|O_APPEND in LOG's directory, mode 0640:
 *             "head", a 1 MiB hole, "tail" (the hole kept: few blocks)
 *  opath_f    LOG opened O_PATH; opath_d LOG's directory O_PATH
 *  tfd_abs    CLOCK_REALTIME timerfd armed TFD_TIMER_ABSTIME, 3600 s out:
 *             after a restore it still expires at that wall-clock time
 *             (not later by the time spent checkpointed)
 *  ep         epoll with a pipe's read end, EPOLLIN|EPOLLONESHOT, fired
 *             once (disabled); "x" stays queued in the pipe
 *  ghost_empty a file in LOG's directory sized 1 MiB by ftruncate only (no
 *             data block at all), then unlinked
 *  map_empty  the shm-pool pattern: a file opened, unlinked, sized 64 KiB
 *             by ftruncate, mapped MAP_SHARED untouched, its fd closed
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t finish;
static int logfd, failed;

static void on_usr1(int sig) { (void)sig; finish = 1; }

#define CHECK(cond, ...) do { if (!(cond)) { dprintf(logfd, "FAIL: " __VA_ARGS__); dprintf(logfd, "\n"); failed = 1; } } while (0)

static void die(const char *what) { dprintf(2, "fdfiles: %s: %s\n", what, strerror(errno)); exit(2); }

static FILE *tmp_glibc_f;
static int tmp_glibc, tmp_sparse, opath_f, opath_d, tfd_abs, ep, pipe_ep[2], ghost_empty;
static char *map_empty;
static ino_t log_ino, dir_ino;
static struct timespec abs_deadline;
static char logdir[4096];

#define HOLE (1 << 20)
#define MAPLEN (64 << 10)

static void setup(const char *log)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s", log);
	snprintf(logdir, sizeof logdir, "%s", dirname(tmp));

	if (!(tmp_glibc_f = tmpfile())) die("tmpfile");
	tmp_glibc = fileno(tmp_glibc_f);
	if (write(tmp_glibc, "tmp-data", 8) != 8) die("write tmpfile");
	if (lseek(tmp_glibc, 2, SEEK_SET) != 2) die("seek tmpfile");

	if ((tmp_sparse = open(logdir, O_TMPFILE | O_RDWR | O_APPEND, 0640)) < 0) die("O_TMPFILE");
	if (write(tmp_sparse, "head", 4) != 4) die("write head");
	if (ftruncate(tmp_sparse, HOLE) < 0) die("ftruncate");
	if (write(tmp_sparse, "tail", 4) != 4) die("write tail");
	if (fchmod(tmp_sparse, 0640) < 0) die("fchmod");

	struct stat st;
	if ((opath_f = open(log, O_PATH)) < 0) die("O_PATH file");
	if ((opath_d = open(logdir, O_PATH | O_DIRECTORY)) < 0) die("O_PATH dir");
	if (fstat(opath_f, &st) < 0) die("fstat");
	log_ino = st.st_ino;
	if (fstat(opath_d, &st) < 0) die("fstat");
	dir_ino = st.st_ino;

	if ((tfd_abs = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK)) < 0) die("timerfd_create");
	clock_gettime(CLOCK_REALTIME, &abs_deadline);
	abs_deadline.tv_sec += 3600;
	struct itimerspec its = {.it_value = abs_deadline};
	if (timerfd_settime(tfd_abs, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime");

	if (pipe(pipe_ep) < 0) die("pipe");
	if ((ep = epoll_create1(0)) < 0) die("epoll_create1");
	struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = 0x05};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, pipe_ep[0], &ev) < 0) die("epoll_ctl");
	if (write(pipe_ep[1], "x", 1) != 1) die("write pipe");
	struct epoll_event got[2];
	if (epoll_wait(ep, got, 2, 1000) != 1) die("epoll_wait");

	char name[4200];
	snprintf(name, sizeof name, "%s/ghost_empty", logdir);
	if ((ghost_empty = open(name, O_RDWR | O_CREAT | O_EXCL, 0600)) < 0) die("open ghost_empty");
	if (ftruncate(ghost_empty, HOLE) < 0) die("ftruncate ghost_empty");
	if (unlink(name) < 0) die("unlink ghost_empty");

	snprintf(name, sizeof name, "%s/map_empty", logdir);
	int mf = open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (mf < 0) die("open map_empty");
	if (unlink(name) < 0) die("unlink map_empty");
	if (ftruncate(mf, MAPLEN) < 0) die("ftruncate map_empty");
	if ((map_empty = mmap(NULL, MAPLEN, PROT_READ | PROT_WRITE, MAP_SHARED, mf, 0)) == MAP_FAILED) die("mmap map_empty");
	close(mf);
}

/* fdinfo_has reports whether /proc/self/fdinfo/FD has the line prefix
 * followed by want. */
static int fdinfo_has(int fd, const char *key, const char *want)
{
	char p[64], line[512];
	snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
	FILE *f = fopen(p, "r");
	if (!f)
		return 0;
	int ok = 0;
	while (fgets(line, sizeof line, f))
		if (strncmp(line, key, strlen(key)) == 0 && strstr(line + strlen(key), want))
			ok = 1;
	fclose(f);
	return ok;
}

static void check(void)
{
	char buf[64];
	struct stat st;
	int fl;

	/* tmpfile() */
	CHECK(fstat(tmp_glibc, &st) == 0 && st.st_nlink == 0 && S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0600,
	      "tmp_glibc: nlink %lu mode %o", (unsigned long)st.st_nlink, st.st_mode);
	CHECK(lseek(tmp_glibc, 0, SEEK_CUR) == 2, "tmp_glibc: offset %ld", (long)lseek(tmp_glibc, 0, SEEK_CUR));
	fl = fcntl(tmp_glibc, F_GETFL);
	CHECK((fl & O_TMPFILE) == O_TMPFILE && (fl & O_ACCMODE) == O_RDWR, "tmp_glibc: flags %o", fl);
	CHECK(pread(tmp_glibc, buf, 16, 0) == 8 && memcmp(buf, "tmp-data", 8) == 0, "tmp_glibc: contents");
	char name[4200];
	snprintf(name, sizeof name, "%s/linked", logdir);
	CHECK(linkat(tmp_glibc, "", AT_FDCWD, name, AT_EMPTY_PATH) < 0 && errno == ENOENT, "tmp_glibc: linkable (errno %d)", errno);
	unlink(name);

	/* O_TMPFILE with a hole */
	CHECK(fstat(tmp_sparse, &st) == 0 && st.st_nlink == 0 && st.st_size == HOLE + 4 && (st.st_mode & 07777) == 0640,
	      "tmp_sparse: nlink %lu size %ld mode %o", (unsigned long)st.st_nlink, (long)st.st_size, st.st_mode);
	CHECK(st.st_blocks * 512 < HOLE / 2, "tmp_sparse: %ld blocks: the hole was filled", (long)st.st_blocks);
	fl = fcntl(tmp_sparse, F_GETFL);
	CHECK((fl & O_TMPFILE) == O_TMPFILE && (fl & O_APPEND), "tmp_sparse: flags %o", fl);
	CHECK(pread(tmp_sparse, buf, 4, 0) == 4 && memcmp(buf, "head", 4) == 0, "tmp_sparse: head");
	CHECK(pread(tmp_sparse, buf, 8, HOLE) == 4 && memcmp(buf, "tail", 4) == 0, "tmp_sparse: tail");
	CHECK(pread(tmp_sparse, buf, 4, 4096) == 4 && memcmp(buf, "\0\0\0\0", 4) == 0, "tmp_sparse: hole not zero");
	CHECK(lseek(tmp_sparse, 0, SEEK_CUR) == HOLE + 4, "tmp_sparse: offset");

	/* O_PATH */
	CHECK((fcntl(opath_f, F_GETFL) & O_PATH) && fstat(opath_f, &st) == 0 && st.st_ino == log_ino, "opath_f");
	CHECK((fcntl(opath_d, F_GETFL) & O_PATH) && fstat(opath_d, &st) == 0 && st.st_ino == dir_ino, "opath_d");
	int lf = openat(opath_d, "log", O_RDONLY);
	CHECK(lf >= 0, "opath_d: openat log: %s", strerror(errno));
	if (lf >= 0)
		close(lf);

	/* absolute timerfd */
	CHECK(fdinfo_has(tfd_abs, "settime flags:", "01"), "tfd_abs: not TFD_TIMER_ABSTIME any more");
	struct itimerspec cur;
	struct timespec t1, t2;
	clock_gettime(CLOCK_REALTIME, &t1);
	int gt = timerfd_gettime(tfd_abs, &cur);
	clock_gettime(CLOCK_REALTIME, &t2);
	long long dl = abs_deadline.tv_sec * 1000000000LL + abs_deadline.tv_nsec;
	long long left = cur.it_value.tv_sec * 1000000000LL + cur.it_value.tv_nsec;
	long long lo = dl - (t2.tv_sec * 1000000000LL + t2.tv_nsec) - 10000000, hi = dl - (t1.tv_sec * 1000000000LL + t1.tv_nsec) + 10000000;
	CHECK(gt == 0 && left >= lo && left <= hi, "tfd_abs: %lld ns left, want %lld..%lld (the deadline moved)", left, lo, hi);

	/* fired one-shot: stays disabled, even for HUP */
	struct epoll_event got[2];
	CHECK(fdinfo_has(ep, "tfd:", "events: 40000000"), "ep: the fired one-shot is not disabled");
	CHECK(epoll_wait(ep, got, 2, 0) == 0, "ep: the disabled one-shot reports");
	close(pipe_ep[1]);
	CHECK(epoll_wait(ep, got, 2, 0) == 0, "ep: the disabled one-shot reports HUP");
	struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = 0x05};
	CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, pipe_ep[0], &ev) == 0 && epoll_wait(ep, got, 2, 0) == 1 && got[0].data.u64 == 0x05,
	      "ep: rearmed one-shot does not report");
	CHECK(read(pipe_ep[0], buf, 8) == 1 && buf[0] == 'x', "pipe_ep: contents");

	/* deleted, sized, no data */
	CHECK(fstat(ghost_empty, &st) == 0 && st.st_nlink == 0 && st.st_size == HOLE && (st.st_mode & 07777) == 0600,
	      "ghost_empty: nlink %lu size %ld mode %o", (unsigned long)st.st_nlink, (long)st.st_size, st.st_mode);
	CHECK(st.st_blocks * 512 < HOLE / 2, "ghost_empty: %ld blocks: the hole was filled", (long)st.st_blocks);
	CHECK(pread(ghost_empty, buf, 4, HOLE - 4) == 4 && memcmp(buf, "\0\0\0\0", 4) == 0, "ghost_empty: not zero");
	CHECK(lseek(ghost_empty, 0, SEEK_CUR) == 0, "ghost_empty: offset");

	/* mapped deleted file, untouched: still that file, all zero, shared */
	char mp[128];
	snprintf(mp, sizeof mp, "/proc/self/map_files/%lx-%lx", (unsigned long)map_empty, (unsigned long)map_empty + MAPLEN);
	int mf = open(mp, O_RDWR);
	CHECK(mf >= 0 && fstat(mf, &st) == 0 && st.st_nlink == 0 && st.st_size == MAPLEN && (st.st_mode & 07777) == 0600,
	      "map_empty: %s: nlink %lu size %ld mode %o", mf < 0 ? strerror(errno) : "", (unsigned long)st.st_nlink, (long)st.st_size, st.st_mode);
	int zero = 1;
	for (int i = 0; i < MAPLEN; i++)
		zero &= map_empty[i] == 0;
	CHECK(zero, "map_empty: not zero");
	map_empty[100] = 'm';
	CHECK(mf >= 0 && pread(mf, buf, 1, 100) == 1 && buf[0] == 'm', "map_empty: the mapping is not the file's");
	if (mf >= 0)
		close(mf);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: fdfiles LOG\n");
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
