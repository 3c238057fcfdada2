// 16 threads: even ones spin, odd ones sleep 1 ms between increments; all
// update a shared total under a mutex. The main thread blocks in
// pthread_join (a futex wait).
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#define N 16
volatile unsigned long counters[N];
unsigned long total;
pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static void *run(void *arg) {
	long i = (long)arg;
	for (;;) {
		pthread_mutex_lock(&mu);
		total++;
		pthread_mutex_unlock(&mu);
		counters[i]++;
		if (i & 1)
			usleep(1000);
		else
			for (volatile int k = 0; k < 10000; k++)
				;
	}
	return NULL;
}
int main(void) {
	pthread_t t[N];
	for (long i = 0; i < N; i++)
		pthread_create(&t[i], NULL, run, (void *)i);
	while (1) {
		int all = 1;
		for (int i = 0; i < N; i++)
			all &= counters[i] > 0;
		if (all)
			break;
		usleep(1000);
	}
	printf("%p\n", (void *)counters);
	fflush(stdout);
	pthread_join(t[0], NULL);
	return 0;
}
