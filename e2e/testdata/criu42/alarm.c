/*
 * alarm: a tiny libc-free program for the CRIU 4.2 image fixtures (see
 * gen.sh). It installs a SIGALRM handler (rt_sigaction with its own
 * restorer) and a 5 ms ITIMER_REAL, then forks one child; parent and
 * child each count SIGALRM deliveries in the global alarms while sleeping
 * in pause(2). A test reads alarms from /proc/PID/mem (the binary is not
 * PIE): it grows in both processes only if the handler, the mask, the
 * interval timer (the child re-arms its own: timers are not inherited) and
 * the restart of pause all came back.
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

volatile unsigned long alarms;

static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
}

void restore_rt(void);
__asm__(".globl restore_rt\nrestore_rt:\n\tmov $15, %eax\n\tsyscall\n\tud2\n");

struct ksigaction {
	void (*handler)(int);
	unsigned long flags;
	void (*restorer)(void);
	unsigned long mask;
};

static void arm(void)
{
	struct itimerval it = {{0, 5000}, {0, 5000}};
	sys4(__NR_setitimer, ITIMER_REAL, (long)&it, 0, 0);
}

void _start_c(void)
{
	struct ksigaction sa = {on_alarm, SA_RESTORER | SA_RESTART, restore_rt, 0};
	sys4(__NR_rt_sigaction, SIGALRM, (long)&sa, 0, 8);
	sys4(__NR_fork, 0, 0, 0, 0);
	arm(); /* in both: a child does not inherit the parent's timer */
	for (;;)
		sys4(__NR_pause, 0, 0, 0, 0);
}

__asm__(".globl _start\n_start:\n\tand $-16, %rsp\n\tcall _start_c\n\tud2\n");
