/* uffduser: a program that uses userfaultfd itself. Region U (16 pages,
 * written) is registered in MISSING mode with its own uffd, so no other
 * uffd can track it. SIGUSR1 rewrites page 0 of U and logs "step done". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PG 4096
static volatile sig_atomic_t step;
static void on_usr1(int s) { (void)s; step = 1; }

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	FILE *logf = fopen(argv[1], "a");
	if (!logf)
		return 2;
	setvbuf(logf, NULL, _IONBF, 0);
	char *u = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(u, 'u', 16 * PG);
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0)
		return 3;
	struct uffdio_api api = {.api = UFFD_API};
	if (ioctl(fd, UFFDIO_API, &api))
		return 4;
	struct uffdio_register reg = {.range = {.start = (unsigned long)u, .len = 16 * PG}, .mode = UFFDIO_REGISTER_MODE_MISSING};
	if (ioctl(fd, UFFDIO_REGISTER, &reg))
		return 5;
	signal(SIGUSR1, on_usr1);
	fprintf(logf, "ready pid=%d U=%p\n", getpid(), (void *)u);
	for (;;) {
		if (step) {
			step = 0;
			u[0]++;
			fprintf(logf, "step done\n");
		}
		usleep(2000);
	}
}
