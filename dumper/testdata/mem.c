/* mem: memory layouts for the dumper's tests. Prints the addresses, then
 * sleeps. Page i of each region holds the byte (tag + i). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096

static void fill(char *p, int first, int n, int tag)
{
	for (int i = first; i < first + n; i++)
		memset(p + (size_t)i * PG, tag + i, PG);
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	/* 64 private pages: 0..31 written, 32..47 only read (zero page), rest untouched. */
	char *priv = mmap(NULL, 64 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(priv, 0, 32, 1);
	volatile char sink = 0;
	for (int i = 32; i < 48; i++)
		sink += priv[(size_t)i * PG];
	madvise(priv, 64 * PG, MADV_DONTFORK);
	/* 16 shared anonymous pages: 8 written through this view, 4 more
	 * through a second view of the same object (mremap of old size 0),
	 * which this view's page tables never see. */
	char *shared = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	fill(shared, 0, 8, 40);
	char *view2 = mremap(shared, 0, 16 * PG, MREMAP_MAYMOVE);
	if (view2 == MAP_FAILED)
		return 2;
	fill(view2, 8, 4, 40);
	/* 4 written pages made PROT_NONE. */
	char *none = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(none, 0, 4, 80);
	mprotect(none, 4 * PG, PROT_NONE);
	/* A private file mapping with page 1 written. */
	int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
	char buf[3 * PG];
	memset(buf, 'f', sizeof(buf));
	if (write(fd, buf, sizeof(buf)) != sizeof(buf))
		return 2;
	char *file = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	close(fd);
	sink += file[0];
	fill(file, 1, 1, 100);
	FILE *log = fopen(argv[2], "w");
	fprintf(log, "priv=%p shared=%p none=%p file=%p\nready\n", priv, shared, none, file);
	fclose(log);
	for (;;)
		pause();
}
