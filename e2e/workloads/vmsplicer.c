/* vmsplicer: the owner's side of testutil's vmsplice floor. It maps and
 * writes argv[1] MiB of private anonymous memory, prints "ready\n" on
 * stdout, and then for every byte read from stdin vmsplices the whole
 * region into the pipe on fd 3 (gift-less, as godwit's injected vmsplice
 * does). It exits when stdin closes. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	size_t size = strtoull(argv[1], NULL, 10) << 20;
	char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 1;
	for (size_t i = 0; i < size; i += 4096)
		mem[i] = (char)((i >> 12) | 1);
	printf("ready\n");
	fflush(stdout);
	char c;
	while (read(0, &c, 1) == 1) {
		for (size_t off = 0; off < size;) {
			struct iovec iov = { mem + off, size - off };
			ssize_t n = vmsplice(3, &iov, 1, 0);
			if (n <= 0)
				return 1;
			off += n;
		}
	}
	return 0;
}
