/*
 * memfd: holds memfds with state in each, ticks like counter, and on
 * SIGUSR1 checks every object and exits 0, or 3 after logging
 * "FAIL: what" for each object that is wrong.
 *
 *   memfd LOG
 *
 *  ma   "godwit-a": 5 pages + 100 bytes, pattern in pages 0-2, 4, 5 (page
 *       3 a hole), sealed SHRINK|GROW|WRITE, then mapped read-only
 *       shared (ma_map); ma2 a dup; offset 1234
 *  mb   "godwit-b", no sealing (F_SEAL_SEAL): mapped shared writable
 *       here (mb_map) and in a child (fork), which keeps mb too; on
 *       SIGUSR1 the child writes "child-map" through its mapping and
 *       "child-fd" through its fd and exits 0: the parent sees both
 *       through its own mapping and fd (one inode in both tasks)
 *  mc   "godwit-c": mapped private, page 0 written there (copy on write:
 *       the file keeps "file-c"); fd closed, mapping kept
 *  md   "godwit-d": MFD_NOEXEC_SEAL (mode 0666, F_SEAL_EXEC), read-only
 *       description (reopened O_RDONLY through /proc/self/fd)
 *  me   "godwit\ne" (a newline in the name, which maps shows as
 *       "\012"): fd closed, shared mapping only ("only-mapped")
 *
 * Nothing is changed between the set-up and SIGUSR1, so the same checks
 * pass in the original and in a restored copy.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

static int logfd, failed;
static volatile sig_atomic_t finish;
#define FAIL(...) do { dprintf(logfd, "FAIL: " __VA_ARGS__); dprintf(logfd, "\n"); failed = 1; } while (0)
#define CHECK(cond, ...) do { if (!(cond)) FAIL(__VA_ARGS__); } while (0)

static void die(const char *what) { dprintf(2, "memfd: %s: %s\n", what, strerror(errno)); exit(2); }
static void on_usr1(int sig) { (void)sig; finish = 1; }

#define PG 4096
static int ma, ma2, mb, md;
static char *ma_map, *mb_map, *mc_map, *me_map;
static pid_t child;

static char pat(long off) { return (char)('a' + (off * 7 + off / PG) % 26); }

static void child_main(void)
{
	signal(SIGUSR1, on_usr1);
	while (!finish)
		pause();
	memcpy(mb_map + 8, "child-map", 9);
	if (pwrite(mb, "child-fd", 8, 200) != 8)
		_exit(4);
	_exit(0);
}

static void setup(void)
{
	if ((ma = memfd_create("godwit-a", MFD_ALLOW_SEALING)) < 0) die("memfd_create a");
	if (ftruncate(ma, 5 * PG + 100) < 0) die("ftruncate a");
	char buf[PG];
	for (int p = 0; p < 6; p++) {
		if (p == 3)
			continue;
		for (int i = 0; i < PG; i++)
			buf[i] = pat((long)p * PG + i);
		if (pwrite(ma, buf, p == 5 ? 100 : PG, (off_t)p * PG) < 0) die("write a");
	}
	/* F_SEAL_WRITE refuses any shared mapping that may write: the
	 * read-only one comes after the seal (the kernel then leaves
	 * VM_MAYWRITE off). */
	if (fcntl(ma, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0) die("seal a");
	if ((ma_map = mmap(NULL, 5 * PG, PROT_READ, MAP_SHARED, ma, 0)) == MAP_FAILED) die("mmap a");
	if ((ma2 = dup(ma)) < 0) die("dup a");
	if (lseek(ma, 1234, SEEK_SET) != 1234) die("seek a");

	if ((mb = memfd_create("godwit-b", 0)) < 0) die("memfd_create b");
	if (ftruncate(mb, 2 * PG) < 0) die("ftruncate b");
	if ((mb_map = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, mb, 0)) == MAP_FAILED) die("mmap b");
	memcpy(mb_map, "parent", 6);

	int mc = memfd_create("godwit-c", 0);
	if (mc < 0 || pwrite(mc, "file-c", 6, 0) != 6 || ftruncate(mc, PG) < 0) die("memfd c");
	if ((mc_map = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, mc, 0)) == MAP_FAILED) die("mmap c");
	memcpy(mc_map, "private", 7);
	close(mc);

	int d = memfd_create("godwit-d", MFD_NOEXEC_SEAL);
	if (d < 0 || pwrite(d, "dee", 3, 0) != 3) die("memfd d");
	char p[64];
	snprintf(p, sizeof p, "/proc/self/fd/%d", d);
	if ((md = open(p, O_RDONLY)) < 0) die("reopen d");
	close(d);

	int me = memfd_create("godwit\ne", MFD_ALLOW_SEALING);
	if (me < 0 || pwrite(me, "only-mapped", 11, 0) != 11) die("memfd e");
	if ((me_map = mmap(NULL, PG, PROT_READ, MAP_SHARED, me, 0)) == MAP_FAILED) die("mmap e");
	close(me);

	if ((child = fork()) < 0) die("fork");
	if (child == 0)
		child_main();
}

/* mapped reports whether /proc/self/maps has a line for addr naming
 * "/memfd:NAME (deleted)". */
static int mapped(void *addr, const char *name)
{
	char want[128], line[512];
	snprintf(want, sizeof want, "%lx-", (unsigned long)addr);
	FILE *f = fopen("/proc/self/maps", "r");
	int ok = 0;
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, want, strlen(want))) {
			char n[128];
			snprintf(n, sizeof n, "/memfd:%s (deleted)\n", name);
			size_t l = strlen(line), k = strlen(n);
			ok = l >= k && !strcmp(line + l - k, n);
		}
	if (f)
		fclose(f);
	return ok;
}

/* linkname reports whether the map_files link of the mapping at addr
 * (the name unescaped) is "/memfd:NAME (deleted)". */
static int linkname(void *addr, const char *name)
{
	char want[128], line[512], n[300], l[300];
	snprintf(want, sizeof want, "%lx-", (unsigned long)addr);
	FILE *f = fopen("/proc/self/maps", "r");
	int ok = 0;
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, want, strlen(want))) {
			char p[128];
			*strchr(line, ' ') = 0;
			snprintf(p, sizeof p, "/proc/self/map_files/%s", line);
			ssize_t k = readlink(p, l, sizeof l - 1);
			snprintf(n, sizeof n, "/memfd:%s (deleted)", name);
			ok = k > 0 && (l[k] = 0, !strcmp(l, n));
		}
	if (f)
		fclose(f);
	return ok;
}

static int fdname(int fd, const char *name)
{
	char p[64], l[256], want[128];
	snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(p, l, sizeof l - 1);
	if (n < 0)
		return 0;
	l[n] = 0;
	snprintf(want, sizeof want, "/memfd:%s (deleted)", name);
	return !strcmp(l, want);
}

static void check(void)
{
	struct stat st, st2;
	/* ma */
	CHECK(fdname(ma, "godwit-a") && mapped(ma_map, "godwit-a"), "ma: name");
	CHECK(fstat(ma, &st) == 0 && st.st_size == 5 * PG + 100, "ma: size %ld", (long)st.st_size);
	CHECK(fcntl(ma, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE), "ma: seals %#x", fcntl(ma, F_GET_SEALS));
	CHECK(lseek(ma2, 0, SEEK_CUR) == 1234, "ma2: offset %ld (not one description with ma)", (long)lseek(ma2, 0, SEEK_CUR));
	CHECK(fstat(ma2, &st2) == 0 && st2.st_ino == st.st_ino, "ma2: another inode");
	CHECK(write(ma, "x", 1) < 0 && errno == EPERM, "ma: write not refused by the seal");
	CHECK(ftruncate(ma, PG) < 0 && errno == EPERM, "ma: shrink not refused by the seal");
	CHECK(mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, ma, 0) == MAP_FAILED, "ma: writable mapping allowed");
	/* Before anything reads page 3 through the mapping (a shared
	 * mapping's read fault fills a shmem hole). */
	off_t hole = lseek(ma, 0, SEEK_HOLE);
	CHECK(hole == 3 * PG, "ma: first hole at %ld, want %d", (long)hole, 3 * PG);
	lseek(ma, 1234, SEEK_SET);
	int bad = 0;
	for (long i = 0; i < 5 * PG + 100; i++) {
		char want = (i / PG == 3) ? 0 : pat(i), got;
		if (pread(ma, &got, 1, i) != 1 || got != want)
			bad++;
		if (i < 5 * PG && ma_map[i] != want)
			bad++;
	}
	CHECK(!bad, "ma: %d bytes differ", bad);

	/* mb, with the child */
	CHECK(fdname(mb, "godwit-b") && mapped(mb_map, "godwit-b"), "mb: name");
	CHECK(fcntl(mb, F_GET_SEALS) == F_SEAL_SEAL, "mb: seals %#x", fcntl(mb, F_GET_SEALS));
	CHECK(!memcmp(mb_map, "parent", 6), "mb: mapping lost its contents");
	int status;
	CHECK(kill(child, SIGUSR1) == 0, "child: gone");
	CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status %#x", status);
	char b[16] = {0};
	CHECK(!memcmp(mb_map + 8, "child-map", 9), "mb: the child's write through its mapping is not in ours");
	CHECK(pread(mb, b, 9, 8) == 9 && !memcmp(b, "child-map", 9), "mb: the child's mapping write is not in the fd");
	CHECK(!memcmp(mb_map + 200, "child-fd", 8), "mb: the child's write through its fd is not in our mapping");

	/* mc: private copy, file unchanged */
	CHECK(mapped(mc_map, "godwit-c"), "mc: name");
	CHECK(!memcmp(mc_map, "private", 7), "mc: private page lost");
	char mf[128];
	snprintf(mf, sizeof mf, "/proc/self/map_files/%lx-%lx", (unsigned long)mc_map, (unsigned long)mc_map + PG);
	int cf = open(mf, O_RDONLY);
	CHECK(cf >= 0 && pread(cf, b, 6, 0) == 6 && !memcmp(b, "file-c", 6), "mc: file contents changed");
	if (cf >= 0)
		close(cf);

	/* md */
	CHECK(fdname(md, "godwit-d"), "md: name");
	CHECK(fstat(md, &st) == 0 && (st.st_mode & 07777) == 0666, "md: mode %o", st.st_mode & 07777);
	CHECK(fcntl(md, F_GET_SEALS) & F_SEAL_EXEC, "md: no F_SEAL_EXEC");
	CHECK((fcntl(md, F_GETFL) & O_ACCMODE) == O_RDONLY, "md: not read-only");
	CHECK(pread(md, b, 3, 0) == 3 && !memcmp(b, "dee", 3), "md: contents");

	/* me */
	CHECK(mapped(me_map, "godwit\\012e") && linkname(me_map, "godwit\ne") && !memcmp(me_map, "only-mapped", 11), "me: mapping");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: memfd LOG\n");
		return 2;
	}
	if ((logfd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644)) < 0) die("open log");
	signal(SIGUSR1, on_usr1);
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
