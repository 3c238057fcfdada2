// Sleeps 1.5 s in one nanosleep; exits 0 only if the sleep returned 0 and
// lasted at least what was asked (a restart that lost time, or -EINTR, or a
// raw -ERESTART* leaking out, all fail).
#include <stdio.h>
#include <time.h>
int main(void) {
	struct timespec a, b, ts = {1, 500000000};
	clock_gettime(CLOCK_MONOTONIC, &a);
	printf("ready\n");
	fflush(stdout);
	if (nanosleep(&ts, NULL) != 0)
		return 2;
	clock_gettime(CLOCK_MONOTONIC, &b);
	double d = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
	return d >= 1.5 ? 0 : 3;
}
