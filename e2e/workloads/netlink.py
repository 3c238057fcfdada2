"""netlink.py: holds netlink sockets across a checkpoint.

    python3 netlink.py LOG

Makes a NETLINK_ROUTE socket bound by the kernel (autobind) in the link
group (RTNLGRP_LINK, 1) and group 33, one bound to a chosen port id, and an
unbound NETLINK_GENERIC socket; ticks into LOG. On SIGUSR1 it checks each
socket's port id and groups are as they were, that a RTM_GETLINK request on
the chosen-port socket is answered, and that the group socket got the
RTM_NEWLINK of a link named gwdummy0 (the test makes it); exits 0, or 3
with BAD lines in LOG.
"""
import os
import select
import signal
import socket
import struct
import time

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_LIST_MEMBERSHIPS = 9
NETLINK_GENERIC = 16
RTM_NEWLINK = 16
RTM_GETLINK = 18
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
NLMSG_DONE = 3

finish = False


def on_usr1(signum, frame):
    global finish
    finish = True


def groups(s):
    b = s.getsockopt(SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 64)
    words = list(struct.unpack("=%dI" % (len(b) // 4), b))
    while words and words[-1] == 0:
        words.pop()
    return words


def main():
    import sys
    log = os.open(sys.argv[-1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    signal.signal(signal.SIGUSR1, on_usr1)

    mon = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    mon.bind((0, 1))  # autobind, RTMGRP_LINK
    mon.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, 33)
    fixed = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    fixed_port = 0x40000000 + os.getpid()
    fixed.bind((fixed_port, 0))
    gen = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    before = (mon.getsockname(), groups(mon), fixed.getsockname(), gen.getsockname())
    os.write(log, b"ready pid=%d mon=%r\n" % (os.getpid(), before[0]))

    ticks = 0
    while not finish:
        ticks += 1
        os.write(log, b"tick %d\n" % ticks)
        time.sleep(0.01)

    bad = []
    after = (mon.getsockname(), groups(mon), fixed.getsockname(), gen.getsockname())
    if after != before:
        bad.append("sockets changed: %r, was %r" % (after, before))
    if after[1] != [1, 1]:
        bad.append("monitor groups %r, want [1, 1] (groups 1 and 33)" % (after[1],))
    # A request on the chosen-port socket is answered.
    req = struct.pack("=IHHII", 32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, fixed_port) + b"\0" * 16
    fixed.send(req)
    got_done = False
    deadline = time.time() + 5
    while not got_done and time.time() < deadline:
        r, _, _ = select.select([fixed], [], [], 1)
        if not r:
            continue
        data = fixed.recv(65536)
        off = 0
        while off + 16 <= len(data):
            ln, typ, _, seq, _ = struct.unpack_from("=IHHII", data, off)
            if typ == NLMSG_DONE and seq == 1:
                got_done = True
            off += (ln + 3) & ~3
            if ln == 0:
                break
    if not got_done:
        bad.append("RTM_GETLINK dump not answered")
    # The test made gwdummy0: its RTM_NEWLINK reached the monitor.
    seen = False
    deadline = time.time() + 5
    while not seen and time.time() < deadline:
        r, _, _ = select.select([mon], [], [], 1)
        if r:
            data = mon.recv(65536)
            if len(data) >= 16 and struct.unpack_from("=IH", data, 0)[1] == RTM_NEWLINK and b"gwdummy0" in data:
                seen = True
    if not seen:
        bad.append("no RTM_NEWLINK for gwdummy0 on the monitor socket")
    for b in bad:
        os.write(log, b"BAD " + b.encode() + b"\n")
    os.write(log, b"done ticks=%d\n" % ticks)
    return 3 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
