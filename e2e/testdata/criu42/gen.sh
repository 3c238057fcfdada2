#!/bin/bash
# gen.sh CRIU: regenerates these CRIU 4.2 fixtures (run as root, from this
# directory). CRIU is a criu binary built from CRIU's v4.2 tag, outside the
# repository (make -j2 criu in a checkout of github.com/checkpoint-restore/criu).
# The program runs from /tmp/godwit-criu42/tick with PID 31000 (a free pid
# high under pid_max 32768), cwd /, its standard streams on /dev/null, in a
# session of its own; CRIU dumps it after it ran for half a second.
set -euo pipefail
criu=$1
cd "$(dirname "$0")"
gcc -O2 -static -nostdlib -fno-stack-protector -fno-asynchronous-unwind-tables -Wl,--build-id -o tick tick.c
mkdir -p /tmp/godwit-criu42 && install -m 0755 tick /tmp/godwit-criu42/tick
rm -rf images && mkdir images
echo 30999 > /proc/sys/kernel/ns_last_pid
(
	for fd in /proc/$BASHPID/fd/*; do # no descriptor of the caller leaks in
		fd=${fd##*/}
		[ "$fd" -gt 2 ] && eval "exec $fd>&-"
	done
	cd / && exec setsid /tmp/godwit-criu42/tick </dev/null >/dev/null 2>&1
) &
pid=$!
[ "$pid" = 31000 ] || { kill $pid; echo "got pid $pid, not 31000: retry" >&2; exit 1; }
sleep 0.5
"$criu" dump -t $pid -D images -v4 -o /tmp/godwit-criu42/dump.log
rm -f images/stats-dump
"$criu" --version | head -1
