// Creates and joins short-lived threads forever, 4 at a time.
#include <pthread.h>
#include <stdio.h>
volatile unsigned long rounds;
static void *run(void *arg) {
	for (volatile int k = 0; k < 1000; k++)
		;
	return arg;
}
int main(void) {
	printf("%p\n", (void *)&rounds);
	fflush(stdout);
	for (;;) {
		pthread_t t[4];
		for (int i = 0; i < 4; i++)
			pthread_create(&t[i], NULL, run, NULL);
		for (int i = 0; i < 4; i++)
			pthread_join(t[i], NULL);
		rounds++;
	}
}
