#!/bin/bash
# gen.sh CRIU [NAME...]: regenerates these CRIU 4.2 fixtures, all or the
# named ones (run as root, from any directory). CRIU is a criu binary built from CRIU's v4.2 tag, outside the
# repository (make -j2 criu in a checkout of github.com/checkpoint-restore/criu).
# Each program runs from /tmp/godwit-criu42/NAME with a fixed, free PID high
# under pid_max 32768 (tick: 31000, alarm: 31100, tree: 31200, fds: 31300;
# threads and children take what follows), cwd /,
# its standard streams on /dev/null, in a session of its own; CRIU dumps it
# after it ran for half a second into NAME-images. fds reads
# /tmp/godwit-criu42/fds.data, 4096 bytes of "g" (the test writes the same
# file before it restores: CRIU and godwit check a regular file's size).
set -euo pipefail
criu=$1
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(tick alarm tree fds)
cd "$(dirname "$0")"
gen() {
	local name=$1 want=$2
	gcc -O2 -static -nostdlib -fno-stack-protector -fno-asynchronous-unwind-tables -Wl,--build-id -o "$name" "$name.c"
	mkdir -p /tmp/godwit-criu42 && install -m 0755 "$name" "/tmp/godwit-criu42/$name"
	rm -rf "$name-images" && mkdir "$name-images"
	echo $((want - 1)) > /proc/sys/kernel/ns_last_pid
	(
		for fd in /proc/$BASHPID/fd/*; do # no descriptor of the caller leaks in
			fd=${fd##*/}
			[ "$fd" -gt 2 ] && eval "exec $fd>&-"
		done
		cd / && exec setsid "/tmp/godwit-criu42/$name" </dev/null >/dev/null 2>&1
	) &
	local pid=$!
	[ "$pid" = "$want" ] || { kill $pid; echo "$name: got pid $pid, not $want: retry" >&2; exit 1; }
	sleep 0.5
	"$criu" dump -t $pid -D "$name-images" -v4 -o "/tmp/godwit-criu42/$name-dump.log"
	rm -f "$name-images/stats-dump"
}
mkdir -p /tmp/godwit-criu42
head -c 4096 /dev/zero | tr '\0' g >/tmp/godwit-criu42/fds.data
declare -A pids=([tick]=31000 [alarm]=31100 [tree]=31200 [fds]=31300)
for n in "${names[@]}"; do
	gen "$n" "${pids[$n]}"
done
"$criu" --version | head -1
