/*
 * sysvns: a program in UTS and IPC namespaces of its own, with System V
 * objects of each kind in its IPC namespace.
 *
 *   sysvns [attach] LOG
 *
 * It unshares a UTS and an IPC namespace, names its host "godwit-box"
 * (domain "godwit.test"), sets kernel.msgmax and kernel.sem, and makes,
 * with chosen ids: a shared memory segment holding a pattern, a set of
 * three semaphores (5, 0, 7) and a message queue holding "alpha" (type 2),
 * "beta" (1) and "gamma" (2). Then it ticks ("tick N" to LOG), each tick
 * raising semaphore 1 by one. On SIGUSR1 it checks its names, the sysctls,
 * every object's id, key and mode, the segment's bytes, the semaphores
 * (semaphore 1 equal to the last tick) and the messages in order, writes
 * "done ticks=N" and exits 0, or exits 3 naming what is wrong.
 *
 * With "attach" the segments stay attached: the program attaches the
 * first read-write and unmaps the attach's first page (a VMA at offset
 * 4096 in the segment), attaches a second, one-page segment read-only,
 * and forks a child that inherits both. Each tick the parent writes the
 * tick number at offset 4096 of the first segment; the child copies it
 * to offset 4104. The check then wants the child's copy to follow, the
 * attach counts (2 each), and the read-only attach still unwritable.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#define SHM_ID 65540
#define SEM_ID 32771
#define MSG_ID 5
#define SHM_SIZE 10000

static volatile sig_atomic_t finish;
static FILE *lg;
static int attach;
static volatile uint64_t *word; /* offset 4096 of the first segment, in the parent's attach */
static unsigned char *ro;       /* the read-only attach of the second segment */
static pid_t child;

static void onusr1(int s) { (void)s; finish = 1; }

static void fail(const char *what) {
	fprintf(lg, "FAIL %s\n", what);
	exit(3);
}

static void put(const char *path, const char *v) {
	FILE *f = fopen(path, "w");
	if (!f || fputs(v, f) < 0 || fclose(f)) perror(path), exit(1);
}

static void get(const char *path, char *buf, size_t n) {
	FILE *f = fopen(path, "r");
	if (!f || !fgets(buf, n, f)) fail(path);
	fclose(f);
	buf[strcspn(buf, "\n")] = 0;
}

struct msg { long type; char text[16]; };

static void check(unsigned long ticks) {
	char buf[256];
	if (gethostname(buf, sizeof buf) || strcmp(buf, "godwit-box")) fail("hostname");
	if (getdomainname(buf, sizeof buf) || strcmp(buf, "godwit.test")) fail("domainname");
	get("/proc/sys/kernel/msgmax", buf, sizeof buf);
	if (strcmp(buf, "9000")) fail("kernel.msgmax");
	get("/proc/sys/kernel/sem", buf, sizeof buf);
	if (strcmp(buf, "250\t32000\t32\t128")) fail("kernel.sem");
	struct shmid_ds sd;
	if (shmget(0x5157, 0, 0) != SHM_ID || shmctl(SHM_ID, IPC_STAT, &sd) || (sd.shm_perm.mode & 0777) != 0640 ||
	    sd.shm_segsz != SHM_SIZE || sd.shm_perm.uid != 1000)
		fail("shm segment");
	unsigned char *p = shmat(SHM_ID, NULL, SHM_RDONLY);
	if (p == (void *)-1) fail("shmat");
	for (int i = 0; i < SHM_SIZE; i++)
		if ((!attach || i < 4096 || i >= 4112) && p[i] != (unsigned char)(i * 13 + 1)) fail("shm contents");
	shmdt(p);
	if (attach) {
		if (sd.shm_nattch != 2) fail("attaches of the first segment");
		if (word[0] != ticks) fail("the tick word");
		for (int i = 0; i < 100 && word[1] != ticks; i++) usleep(10000);
		if (word[1] != ticks) fail("the child's copy");
		int ro_id = shmget(0x5158, 0, 0);
		struct shmid_ds rd;
		if (ro_id < 0 || shmctl(ro_id, IPC_STAT, &rd) || rd.shm_nattch != 2) fail("attaches of the second segment");
		if (ro[0] != 0x5a) fail("the read-only segment's byte");
		if (mprotect(ro, 4096, PROT_READ | PROT_WRITE) == 0 || errno != EACCES) fail("the read-only attach became writable");
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
	if (semget(0x5e3, 0, 0) != SEM_ID) fail("semaphore set id");
	unsigned short v[3];
	if (semctl(SEM_ID, 0, GETALL, v) < 0 || v[0] != 5 || v[1] != ticks || v[2] != 7) fail("semaphore values");
	if (msgget(0x3e9, 0) != MSG_ID) fail("queue id");
	const char *want[] = {"alpha", "beta", "gamma"};
	long types[] = {2, 1, 2};
	for (int i = 0; i < 3; i++) {
		struct msg m;
		ssize_t n = msgrcv(MSG_ID, &m, sizeof m.text, 0, IPC_NOWAIT);
		if (n != (ssize_t)strlen(want[i]) || m.type != types[i] || memcmp(m.text, want[i], n)) fail("message order");
	}
	struct msqid_ds q;
	if (msgctl(MSG_ID, IPC_STAT, &q) || q.msg_qnum != 0) fail("queue left over");
}

int main(int argc, char **argv) {
	if (argc < 2) return 2;
	attach = argc > 2 && !strcmp(argv[1], "attach");
	lg = fopen(argv[argc - 1], "a");
	if (!lg) return 1;
	setvbuf(lg, NULL, _IOLBF, 0);
	if (unshare(CLONE_NEWUTS | CLONE_NEWIPC)) perror("unshare"), exit(1);
	if (sethostname("godwit-box", 10) || setdomainname("godwit.test", 11)) perror("names"), exit(1);
	put("/proc/sys/kernel/msgmax", "9000");
	put("/proc/sys/kernel/sem", "250 32000 32 128");
	char id[16];
	snprintf(id, sizeof id, "%d", SHM_ID);
	put("/proc/sys/kernel/shm_next_id", id);
	int shm = shmget(0x5157, SHM_SIZE, 0640 | IPC_CREAT);
	if (shm != SHM_ID) perror("shmget"), exit(1);
	unsigned char *p = shmat(shm, NULL, 0);
	if (p == (void *)-1) perror("shmat"), exit(1);
	for (int i = 0; i < SHM_SIZE; i++) p[i] = i * 13 + 1;
	if (attach) {
		if (munmap(p, 4096)) perror("munmap"), exit(1);
		word = (volatile uint64_t *)(p + 4096);
		word[0] = word[1] = 0;
		int ro_id = shmget(0x5158, 4096, 0600 | IPC_CREAT);
		unsigned char *w = shmat(ro_id, NULL, 0);
		if (ro_id < 0 || w == (void *)-1) perror("second segment"), exit(1);
		w[0] = 0x5a;
		shmdt(w);
		ro = shmat(ro_id, NULL, SHM_RDONLY);
		if (ro == (void *)-1) perror("shmat ro"), exit(1);
	} else {
		shmdt(p);
	}
	struct shmid_ds sd;
	if (shmctl(shm, IPC_STAT, &sd)) perror("shmctl"), exit(1);
	sd.shm_perm.uid = 1000;
	if (shmctl(shm, IPC_SET, &sd)) perror("shmctl"), exit(1);
	snprintf(id, sizeof id, "%d", SEM_ID);
	put("/proc/sys/kernel/sem_next_id", id);
	int sem = semget(0x5e3, 3, 0600 | IPC_CREAT);
	unsigned short init[3] = {5, 0, 7};
	if (sem != SEM_ID || semctl(sem, 0, SETALL, init)) perror("sem"), exit(1);
	snprintf(id, sizeof id, "%d", MSG_ID);
	put("/proc/sys/kernel/msg_next_id", id);
	int mq = msgget(0x3e9, 0600 | IPC_CREAT);
	if (mq != MSG_ID) perror("msgget"), exit(1);
	const char *text[] = {"alpha", "beta", "gamma"};
	long types[] = {2, 1, 2};
	for (int i = 0; i < 3; i++) {
		struct msg m = {.type = types[i]};
		strcpy(m.text, text[i]);
		if (msgsnd(mq, &m, strlen(text[i]), 0)) perror("msgsnd"), exit(1);
	}
	if (attach) {
		pid_t parent = getpid();
		child = fork();
		if (child < 0) perror("fork"), exit(1);
		if (child == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != parent) _exit(1);
			for (;;) {
				word[1] = word[0];
				usleep(5000);
			}
		}
	}
	signal(SIGUSR1, onusr1);
	unsigned long n;
	for (n = 1; !finish; n++) {
		struct sembuf op = {1, 1, 0};
		if (semop(sem, &op, 1)) perror("semop"), exit(1);
		if (attach) word[0] = n;
		fprintf(lg, "tick %lu\n", n);
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	check(n - 1);
	fprintf(lg, "done ticks=%lu\n", n - 1);
	return 0;
}
