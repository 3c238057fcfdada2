// Blocks in read(0); exits 0 only if it then reads exactly "hello".
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(void) {
	char buf[16];
	printf("ready\n");
	fflush(stdout);
	ssize_t n = read(0, buf, sizeof buf);
	if (n < 0)
		return 10 + (errno & 0x7f);
	if (n != 5 || memcmp(buf, "hello", 5) != 0)
		return 3;
	return 0;
}
