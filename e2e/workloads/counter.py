"""counter.py: the Python workload of godwit's end-to-end tests.

    python3 counter.py [-m MiB] [-t THREADS] LOG

The same protocol as counter.c: a memory pattern, ticks appended to LOG
and written as 64-bit words at the offset of LOG.seq, THREADS threads
bumping a shared counter under a lock and their own; SIGUSR1 verifies
everything and exits 0 (3 when something is wrong); SIGUSR2 is counted.
"""
import argparse
import os
import signal
import struct
import threading
import time

finish = threading.Event()
usr2 = 0


def on_usr1(signum, frame):
    finish.set()


def on_usr2(signum, frame):
    global usr2
    usr2 += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", type=int, default=1)
    ap.add_argument("-t", type=int, default=0)
    ap.add_argument("log")
    a = ap.parse_args()

    log = os.open(a.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    seq = os.open(a.log + ".seq", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGUSR2, on_usr2)

    seed = os.getpid()
    block = bytes((seed * 31 + i) & 0xFF for i in range(4096))
    mem = bytearray(block * (a.m * 256))

    lock = threading.Lock()
    shared = [0]
    own = [0] * a.t

    def worker(i):
        while not finish.is_set():
            with lock:
                shared[0] += 1
                own[i] += 1
            time.sleep(0.0005)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.t)]
    for th in threads:
        th.start()

    os.write(log, b"ready pid=%d\n" % os.getpid())
    ticks = 0
    while not finish.is_set():
        ticks += 1
        os.write(log, b"tick %d\n" % ticks)
        os.write(seq, struct.pack("=Q", ticks))
        time.sleep(0.01)
    for th in threads:
        th.join()

    if mem != block * (a.m * 256):
        os.write(log, b"BAD memory\n")
        return 3
    if sum(own) != shared[0]:
        os.write(log, b"BAD threads: shared %d != sum %d\n" % (shared[0], sum(own)))
        return 3
    pos = os.lseek(seq, 0, os.SEEK_CUR)
    if pos != ticks * 8:
        os.write(log, b"BAD offset of seq: %d, want %d\n" % (pos, ticks * 8))
        return 3
    os.write(log, b"done ticks=%d sum=%d usr2=%d\n" % (ticks, sum(own), usr2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
