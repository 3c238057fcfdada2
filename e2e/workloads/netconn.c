/*
 * netconn: a TCP program for the network tests, ticking like counter.
 *
 *   netconn client ADDR PORT LOG   connect to ADDR:PORT
 *   netconn server ADDR PORT LOG   listen on ADDR:PORT (backlog 7,
 *                                  SO_REUSEADDR, TCP_NODELAY, keepalive
 *                                  60/10/5) and serve every connection
 *   netconn udp ADDR PORT LOG      UDP (IPv4): echo every datagram to
 *                                  ADDR:PORT back, each byte + 1, and send
 *                                  "n=N" each round from a socket
 *                                  connected to ADDR:PORT+1; the echo
 *                                  socket has SO_REUSEADDR, SO_RCVBUF
 *                                  200000, IP_TOS 0x10, then SO_PRIORITY 3
 *                                  (IP_TOS sets a priority too) and
 *                                  SO_BROADCAST, checked on SIGUSR1
 *
 * On each connection it writes the byte stream gen(1) and checks what it
 * reads against gen(2) (gen(seed): x = x*1103515245+12345, byte x>>16),
 * both nonblocking, at most 16 KiB each way per 5 ms round, so that both
 * queues fill while it is frozen. "tick N sent=S recv=R conns=C" every
 * round. SIGUSR2 toggles holding: neither reading nor writing (logged
 * "hold 1" / "hold 0"), so that a test can fill the queues exactly. SIGHUP
 * shuts every connection down for writing (logged "shut"): it writes no
 * more and reads on. A connection whose peer closed is closed. On SIGUSR1 it logs "done ticks=N sent=S recv=R" and exits 0, or
 * 3 after "FAIL: ..." when a byte read was wrong or a connection failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXC 64

struct conn {
	int fd;
	uint32_t wx, rx;      /* generator states */
	int shut;
	unsigned long long sent, recv;
};

static volatile sig_atomic_t finish, hold, shut;
static FILE *logf;
static struct conn conns[MAXC];
static int nconns, failed;

static void on_usr1(int s) { (void)s; finish = 1; }
static void on_usr2(int s) { (void)s; hold = !hold; }
static void on_hup(int s) { (void)s; shut = 1; }

static unsigned char next(uint32_t *x)
{
	*x = *x * 1103515245u + 12345u;
	return (unsigned char)(*x >> 16);
}

static void add(int fd)
{
	if (nconns == MAXC) {
		close(fd);
		return;
	}
	fcntl(fd, F_SETFL, O_NONBLOCK);
	conns[nconns++] = (struct conn){ .fd = fd, .wx = 1, .rx = 2 };
}

static int sockaddr_of(const char *addr, int port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *a4 = (void *)ss;
	struct sockaddr_in6 *a6 = (void *)ss;
	if (inet_pton(AF_INET, addr, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons(port);
		return sizeof(*a4);
	}
	if (inet_pton(AF_INET6, addr, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(port);
		return sizeof(*a6);
	}
	fprintf(stderr, "bad address %s\n", addr);
	exit(2);
}

static void pump(struct conn *c)
{
	unsigned char buf[16384];
	if (c->fd < 0)
		return;
	uint32_t x = c->wx;
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = next(&x);
	ssize_t n = c->shut ? 0 : write(c->fd, buf, sizeof(buf));
	if (n > 0) {
		for (ssize_t i = 0; i < n; i++)
			next(&c->wx);
		c->sent += n;
	} else if (n < 0 && errno != EAGAIN) {
		fprintf(logf, "FAIL: write: %s\n", strerror(errno));
		failed = 1;
		close(c->fd);
		c->fd = -1;
		return;
	}
	n = read(c->fd, buf, sizeof(buf));
	if (n > 0) {
		for (ssize_t i = 0; i < n; i++) {
			if (buf[i] != next(&c->rx)) {
				fprintf(logf, "FAIL: byte %llu read is wrong\n", c->recv + i);
				failed = 1;
				break;
			}
		}
		c->recv += n;
	} else if (n == 0) {
		close(c->fd); /* the peer closed: done with it */
		c->fd = -1;
	} else if (errno != EAGAIN) {
		fprintf(logf, "FAIL: read: %s\n", strerror(errno));
		failed = 1;
		close(c->fd);
		c->fd = -1;
	}
}

static int getint(int fd, int level, int opt)
{
	int v = -1;
	socklen_t l = sizeof(v);
	getsockopt(fd, level, opt, &v, &l);
	return v;
}

static int udp(const char *addr, int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) }, b = a;
	inet_pton(AF_INET, addr, &a.sin_addr);
	b.sin_addr = a.sin_addr;
	b.sin_port = htons(port + 1);
	int e = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0), c = socket(AF_INET, SOCK_DGRAM, 0);
	int one = 1, rcv = 100000, prio = 3, tos = 0x10;
	setsockopt(e, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(e, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
	setsockopt(e, IPPROTO_IP, IP_TOS, &tos, sizeof(tos));
	setsockopt(e, SOL_SOCKET, SO_PRIORITY, &prio, sizeof(prio));
	setsockopt(e, SOL_SOCKET, SO_BROADCAST, &one, sizeof(one));
	setsockopt(e, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
	if (bind(e, (void *)&a, sizeof(a)) || connect(c, (void *)&b, sizeof(b))) {
		perror("udp");
		return 2;
	}
	fprintf(logf, "ready\n");
	int held = 0;
	for (int tick = 1;; tick++) {
		if (hold != held) {
			held = hold;
			fprintf(logf, "hold %d\n", held);
		}
		if (finish) {
			int ok = getint(e, SOL_SOCKET, SO_REUSEADDR) == 1 && getint(e, SOL_SOCKET, SO_RCVBUF) == 200000 &&
				 getint(e, SOL_SOCKET, SO_PRIORITY) == 3 && getint(e, SOL_SOCKET, SO_BROADCAST) == 1 &&
				 getint(e, IPPROTO_IP, IP_TOS) == 0x10 && getint(e, IPPROTO_IP, IP_PKTINFO) == 1;
			if (!ok)
				fprintf(logf, "FAIL: options reuse=%d rcvbuf=%d prio=%d bcast=%d tos=%d pktinfo=%d\n",
					getint(e, SOL_SOCKET, SO_REUSEADDR), getint(e, SOL_SOCKET, SO_RCVBUF),
					getint(e, SOL_SOCKET, SO_PRIORITY), getint(e, SOL_SOCKET, SO_BROADCAST),
					getint(e, IPPROTO_IP, IP_TOS), getint(e, IPPROTO_IP, IP_PKTINFO));
			fprintf(logf, "done ticks=%d\n", tick - 1);
			return ok ? 0 : 3;
		}
		if (!held) {
			char buf[2048];
			struct sockaddr_in from;
			socklen_t fl;
			ssize_t n;
			while (fl = sizeof(from), (n = recvfrom(e, buf, sizeof(buf), 0, (void *)&from, &fl)) >= 0) {
				for (ssize_t i = 0; i < n; i++)
					buf[i]++;
				sendto(e, buf, n, 0, (void *)&from, fl);
			}
			n = snprintf(buf, sizeof(buf), "n=%d", tick);
			send(c, buf, n, 0); /* refused while nobody listens: fine */
		}
		fprintf(logf, "tick %d\n", tick);
		struct timespec ts = { 0, 5 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: netconn client|server|udp ADDR PORT LOG\n");
		return 2;
	}
	logf = fopen(argv[4], "w");
	if (!logf)
		return 2;
	setvbuf(logf, NULL, _IOLBF, 0);
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	signal(SIGHUP, on_hup);
	signal(SIGPIPE, SIG_IGN);
	if (strcmp(argv[1], "udp") == 0)
		return udp(argv[2], atoi(argv[3]));
	struct sockaddr_storage ss;
	socklen_t sl = sockaddr_of(argv[2], atoi(argv[3]), &ss);
	int lis = -1;
	if (strcmp(argv[1], "server") == 0) {
		lis = socket(ss.ss_family, SOCK_STREAM, 0);
		int one = 1, idle = 60, intvl = 10, cnt = 5;
		setsockopt(lis, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		setsockopt(lis, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(lis, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
		setsockopt(lis, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
		setsockopt(lis, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
		setsockopt(lis, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
		if (bind(lis, (void *)&ss, sl) || listen(lis, 7)) {
			perror("bind/listen");
			return 2;
		}
		fcntl(lis, F_SETFL, O_NONBLOCK);
	} else {
		int fd = socket(ss.ss_family, SOCK_STREAM, 0);
		if (connect(fd, (void *)&ss, sl)) {
			perror("connect");
			return 2;
		}
		add(fd);
	}
	fprintf(logf, "ready\n");
	int held = 0, wasShut = 0;
	for (int tick = 1;; tick++) {
		if (hold != held) {
			held = hold;
			fprintf(logf, "hold %d\n", held);
		}
		if (shut && !wasShut) {
			wasShut = 1;
			for (int i = 0; i < nconns; i++) {
				if (conns[i].fd >= 0 && shutdown(conns[i].fd, SHUT_WR)) {
					fprintf(logf, "FAIL: shutdown: %s\n", strerror(errno));
					failed = 1;
				}
				conns[i].shut = 1;
			}
			fprintf(logf, "shut\n");
		}
		if (lis >= 0 && !held) {
			int fd;
			while ((fd = accept(lis, NULL, NULL)) >= 0)
				add(fd);
		}
		unsigned long long sent = 0, recv = 0;
		for (int i = 0; i < nconns; i++) {
			if (!held)
				pump(&conns[i]);
			sent += conns[i].sent;
			recv += conns[i].recv;
		}
		if (finish) {
			fprintf(logf, "done ticks=%d sent=%llu recv=%llu conns=%d\n", tick - 1, sent, recv, nconns);
			return failed ? 3 : 0;
		}
		fprintf(logf, "tick %d\n", tick);
		struct timespec ts = { 0, 5 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}
