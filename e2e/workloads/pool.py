# pool: a multiprocessing.Pool of 4 workers mid-computation. Its
# semaphores are POSIX semaphores: files in /dev/shm, mapped shared and
# unlinked at once. Writes "tick N" per result as they come (in order),
# then "result SUM" (the sum of the squares of 0..N-1) and exits 0.
import multiprocessing
import sys
import time

N = 400


def square(x):
    time.sleep(0.02)
    return x * x


def main():
    log = open(sys.argv[-1], "a", buffering=1)
    total = 0
    with multiprocessing.Pool(4) as pool:
        for i, r in enumerate(pool.imap(square, range(N), chunksize=1)):
            total += r
            log.write("tick %d\n" % (i + 1))
    log.write("result %d\n" % total)


if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    main()
