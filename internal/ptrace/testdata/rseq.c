// Spins forever inside an rseq critical section that never commits. Its
// abort handler counts aborts and records, for each, how many section
// iterations had run: the kernel must abort as soon as the thread returns
// to user mode after being preempted (or stopped), before it runs one more
// instruction of the section.
#include <stdint.h>
#include <stdio.h>
#include <sys/rseq.h>
volatile uint64_t inside, aborts;
volatile uint64_t at_abort[4096];
int main(void) {
	char *rs = (char *)__builtin_thread_pointer() + __rseq_offset;
	if (__rseq_size == 0)
		return 9; // glibc did not register rseq
	printf("%p %p %p\n", (void *)&inside, (void *)&aborts, (void *)at_abort);
	fflush(stdout);
	__asm__ volatile(
		"1:	leaq cs_desc(%%rip), %%rax\n"
		"	movq %%rax, 8(%[rs])\n"
		"2:	incq %[inside]\n"
		"	jmp 2b\n"
		"3:\n"
		"	.byte 0x0f, 0xb9, 0x3d\n"
		"	.long 0x53053053\n"
		"4:	movq %[aborts], %%rcx\n"
		"	incq %%rcx\n"
		"	movq %%rcx, %[aborts]\n"
		"	andq $4095, %%rcx\n"
		"	movq %[inside], %%rdx\n"
		"	leaq at_abort(%%rip), %%rax\n"
		"	movq %%rdx, (%%rax,%%rcx,8)\n"
		"	jmp 1b\n"
		".pushsection .data, \"aw\"\n"
		".balign 32\n"
		"cs_desc: .long 0, 0\n"
		"	.quad 2b, 3b-2b, 4b\n"
		".popsection\n"
		: [inside] "+m"(inside), [aborts] "+m"(aborts)
		: [rs] "r"(rs)
		: "rax", "rcx", "rdx", "memory");
	return 0;
}
