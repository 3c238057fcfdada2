/*
 * tree: a tiny libc-free process tree for the CRIU 4.2 image fixtures (see
 * gen.sh): the parent forks a child that counts ticks every 5 ms, as the
 * parent does, and a second child that exits at once with status 7 and
 * stays a zombie (nobody waits for it). On SIGUSR1 the parent reaps the
 * zombie and stores its wait status, with bit 31 set, in reaped. A test
 * reads ticks and reaped from /proc/PID/mem (the binary is not PIE): the
 * tree came back if both running processes tick on, the zombie is a
 * zombie of the parent, and its exit status is the dumped one.
 */
#include <asm/unistd.h>
#include <linux/time.h>
#include <linux/signal.h>

static long sys4(long n, long a, long b, long c, long d)
{
	long r;
	register long r10 __asm__("r10") = d;
	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
	return r;
}

volatile unsigned long ticks, reaped;
static volatile int usr1;
static long zombie;

static void on_usr1(int sig)
{
	(void)sig;
	usr1 = 1;
}

void restore_rt(void);
__asm__(".globl restore_rt\nrestore_rt:\n\tmov $15, %eax\n\tsyscall\n\tud2\n");

struct ksigaction {
	void (*handler)(int);
	unsigned long flags;
	void (*restorer)(void);
	unsigned long mask;
};

static void nap(void)
{
	struct timespec t = {0, 5000000};
	sys4(__NR_nanosleep, (long)&t, 0, 0, 0);
}

void _start_c(void)
{
	struct ksigaction sa = {on_usr1, SA_RESTORER | SA_RESTART, restore_rt, 0};
	sys4(__NR_rt_sigaction, SIGUSR1, (long)&sa, 0, 8);
	if (sys4(__NR_fork, 0, 0, 0, 0) == 0) {
		for (;;) {
			ticks++;
			nap();
		}
	}
	zombie = sys4(__NR_fork, 0, 0, 0, 0);
	if (zombie == 0)
		sys4(__NR_exit, 7, 0, 0, 0);
	for (;;) {
		ticks++;
		if (usr1 && !reaped) {
			int status = 0;
			if (sys4(__NR_wait4, zombie, (long)&status, 0, 0) == zombie)
				reaped = (unsigned long)(unsigned int)status | 1UL << 31;
		}
		nap();
	}
}

__asm__(".globl _start\n_start:\n\tand $-16, %rsp\n\tcall _start_c\n\tud2\n");
