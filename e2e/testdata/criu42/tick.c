/*
 * tick: a tiny multi-threaded program without libc, for the CRIU 4.2 image
 * fixtures of internal/model/criuimg (see gen.sh). Two threads made with a
 * raw clone(CLONE_THREAD) bump their own counters every millisecond; the
 * main thread counts ticks every 50 ms in the global ticks and writes
 * "tick N SUM" to stdout (SUM: the threads' total). A test reads ticks and
 * counter[] from /proc/PID/mem (the binary is not PIE: their addresses are
 * in its symbol table) to see that every restored thread runs on. Built -nostdlib -static: the binary is a few KiB and the
 * fixtures do not depend on the host's libc.
 */
#include <asm/unistd.h>
#include <linux/sched.h>
#include <linux/time.h>

static long sys3(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return r;
}

volatile unsigned long counter[2], ticks;
static char stacks[2][16384] __attribute__((aligned(16)));

static void nap(long ns)
{
	struct timespec t = {0, ns};
	sys3(__NR_nanosleep, (long)&t, 0, 0);
}

static void worker(long i)
{
	for (;;) {
		counter[i]++;
		nap(1000000);
	}
}

/* spawn starts worker(i) on its own stack as a thread of this process. */
static void spawn(long i)
{
	register long flags __asm__("rdi") = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
	register long stack __asm__("rsi") = (long)(stacks[i] + sizeof(stacks[i]));
	register long arg __asm__("r12") = i;
	register long fn __asm__("r13") = (long)worker;
	long r;
	__asm__ volatile("xor %%edx, %%edx\n\t"
			 "xor %%r10d, %%r10d\n\t"
			 "xor %%r8d, %%r8d\n\t"
			 "syscall\n\t"
			 "test %%rax, %%rax\n\t"
			 "jnz 1f\n\t"
			 "mov %%r12, %%rdi\n\t"
			 "call *%%r13\n\t"
			 "ud2\n"
			 "1:"
			 : "=a"(r)
			 : "a"((long)__NR_clone), "D"(flags), "S"(stack), "r"(arg), "r"(fn)
			 : "rcx", "r11", "rdx", "r10", "r8", "memory");
}

static char *num(char *p, unsigned long v)
{
	char b[24];
	int n = 0;
	do {
		b[n++] = '0' + v % 10;
		v /= 10;
	} while (v);
	while (n)
		*p++ = b[--n];
	return p;
}

void _start_c(void)
{
	spawn(0);
	spawn(1);
	for (;;) {
		unsigned long n = ++ticks;
		char line[64], *p = line;
		*p++ = 't', *p++ = 'i', *p++ = 'c', *p++ = 'k', *p++ = ' ';
		p = num(p, n);
		*p++ = ' ';
		p = num(p, counter[0] + counter[1]);
		*p++ = '\n';
		sys3(__NR_write, 1, (long)line, p - line);
		nap(50000000);
	}
}

__asm__(".globl _start\n_start:\n\tand $-16, %rsp\n\tcall _start_c\n\tud2\n");
