/*
 * icmpsock: ICMP ping and raw sockets for the network tests, ticking like
 * counter ("tick N" every 5 ms after "ready").
 *
 *   icmpsock LOG          the sockets below
 *   icmpsock queued LOG   the same, then one echo exchange whose reply the
 *                         raw ICMP socket leaves queued (a dump refuses it)
 *   icmpsock shut-ping LOG, icmpsock shut-raw LOG
 *                         the same, the bound ping socket (or the raw
 *                         IP_HDRINCL one) shut down for sending (a dump
 *                         refuses it)
 *
 * Sockets: a ping socket bound to 127.0.0.1 with identifier 4242; one
 * bound to ::1 with identifier 4243; an unbound ping socket; a raw ICMP
 * socket with IP_TTL 33 and an ICMP_FILTER passing echo replies only; a
 * raw socket of protocol 253 with IP_HDRINCL and IP_NODEFRAG, bound to
 * 127.0.0.1, connected to 127.0.0.2, bound to device lo; a raw ICMPv6
 * socket connected to ::1 with an ICMPV6_FILTER passing echo replies only.
 *
 * On SIGUSR1 it compares every socket's addresses and options with what
 * they were at the start, then sends an echo request from each bound ping
 * socket and waits for its reply (type, identifier and sequence checked),
 * and reads the raw ICMP sockets: each must have received an echo reply
 * and nothing its filter blocks (the echo requests cross lo too). It logs
 * "done ticks=N" and exits 0, or 3 after "FAIL: ...".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/icmp.h>
#include <linux/icmpv6.h>
#ifndef IFNAMSIZ
#define IFNAMSIZ 16
#endif
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_NODEFRAG
#define IP_NODEFRAG 22
#endif

static volatile sig_atomic_t finish;
static FILE *logf;
static int failed;

static void on_usr1(int s) { (void)s; finish = 1; }

static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(logf, "FAIL: ");
	vfprintf(logf, fmt, ap);
	fprintf(logf, "\n");
	va_end(ap);
	failed = 1;
}

static int must(int v, const char *what)
{
	if (v < 0) {
		perror(what);
		exit(2);
	}
	return v;
}

static struct sockaddr_in in4(const char *a, int port)
{
	struct sockaddr_in s = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, a, &s.sin_addr);
	return s;
}

static struct sockaddr_in6 in6(const char *a, int port)
{
	struct sockaddr_in6 s = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
	inet_pton(AF_INET6, a, &s.sin6_addr);
	return s;
}

enum { P4, P6, PU, R4, R253, R6, NSOCK };
static int sk[NSOCK];

/* describe appends what the kernel says of socket i to b. */
static void describe(int i, char *b, size_t n)
{
	int s = sk[i];
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);
	char a[INET6_ADDRSTRLEN] = "";
	size_t o = strlen(b);
	memset(&ss, 0, sizeof(ss));
	getsockname(s, (void *)&ss, &l);
	if (ss.ss_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, a, sizeof(a));
	else
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, a, sizeof(a));
	o += snprintf(b + o, n - o, "[%d name %s:%d", i, a, ntohs(((struct sockaddr_in *)&ss)->sin_port));
	l = sizeof(ss);
	memset(&ss, 0, sizeof(ss));
	if (getpeername(s, (void *)&ss, &l) == 0) {
		if (ss.ss_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, a, sizeof(a));
		else
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, a, sizeof(a));
		o += snprintf(b + o, n - o, " peer %s", a);
	}
	int v;
	l = sizeof(v);
	static const struct { int level, opt; const char *name; } opts[] = {
		{ SOL_SOCKET, SO_TYPE, "type" }, { SOL_SOCKET, SO_PROTOCOL, "proto" },
		{ SOL_SOCKET, SO_RCVBUF, "rcvbuf" }, { SOL_SOCKET, SO_PRIORITY, "prio" },
		{ IPPROTO_IP, IP_TTL, "ttl" }, { IPPROTO_IP, IP_HDRINCL, "hdrincl" },
		{ IPPROTO_IP, IP_NODEFRAG, "nodefrag" }, { IPPROTO_IP, IP_TOS, "tos" },
		{ IPPROTO_IPV6, IPV6_V6ONLY, "v6only" }, { IPPROTO_IPV6, IPV6_UNICAST_HOPS, "hops" },
		{ SOL_RAW, ICMP_FILTER, "icmpfilter" },
	};
	for (size_t k = 0; k < sizeof(opts) / sizeof(opts[0]); k++) {
		l = sizeof(v);
		v = 0;
		if (getsockopt(s, opts[k].level, opts[k].opt, &v, &l) == 0)
			o += snprintf(b + o, n - o, " %s=%d", opts[k].name, v);
	}
	struct icmp6_filter { uint32_t data[8]; } f6;
	l = sizeof(f6);
	if (getsockopt(s, SOL_ICMPV6, ICMPV6_FILTER, &f6, &l) == 0)
		o += snprintf(b + o, n - o, " icmp6filter=%08x%08x", f6.data[0], f6.data[4]);
	char dev[IFNAMSIZ] = "";
	l = sizeof(dev);
	if (getsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, dev, &l) == 0 && dev[0])
		o += snprintf(b + o, n - o, " dev=%s", dev);
	snprintf(b + o, n - o, "]");
}

static void describe_all(char *b, size_t n)
{
	b[0] = 0;
	for (int i = 0; i < NSOCK; i++)
		describe(i, b, n);
}

/* echo sends an echo request (v6: ICMPv6) from ping socket s to dst and
 * waits for its reply: returns 0, or -1 after logging why. */
static int echo(int s, int v6, const void *dst, socklen_t dl, int id, int seq)
{
	struct icmphdr h = { .type = v6 ? ICMPV6_ECHO_REQUEST : ICMP_ECHO };
	h.un.echo.sequence = htons(seq);
	char msg[sizeof(h) + 8];
	memcpy(msg, &h, sizeof(h));
	memcpy(msg + sizeof(h), "godwit!", 8);
	if (sendto(s, msg, sizeof(msg), 0, dst, dl) != (ssize_t)sizeof(msg)) {
		fail("echo %d: sendto: %s", id, strerror(errno));
		return -1;
	}
	struct pollfd p = { .fd = s, .events = POLLIN };
	if (poll(&p, 1, 5000) != 1) {
		fail("echo %d: no reply", id);
		return -1;
	}
	char r[256];
	ssize_t k = recv(s, r, sizeof(r), MSG_DONTWAIT);
	struct icmphdr *rh = (void *)r;
	int want = v6 ? ICMPV6_ECHO_REPLY : ICMP_ECHOREPLY;
	if (k < (ssize_t)sizeof(*rh) || rh->type != want || ntohs(rh->un.echo.id) != id || ntohs(rh->un.echo.sequence) != seq) {
		fail("echo %d: reply of %zd bytes, type %d, id %d, seq %d", id, k, k > 0 ? rh->type : -1,
		     k >= (ssize_t)sizeof(*rh) ? ntohs(rh->un.echo.id) : -1, k >= (ssize_t)sizeof(*rh) ? ntohs(rh->un.echo.sequence) : -1);
		return -1;
	}
	return 0;
}

/* filtered reads raw ICMP socket s (v4: after the IP header): every
 * packet must be of type want, and there must be one. */
static void filtered(int s, int v6, int want, const char *name)
{
	int got = 0;
	char r[512];
	ssize_t k;
	struct pollfd p = { .fd = s, .events = POLLIN };
	poll(&p, 1, 2000);
	usleep(50000); /* the echo requests, had they passed, would be in */
	while ((k = recv(s, r, sizeof(r), MSG_DONTWAIT)) > 0) {
		int off = v6 ? 0 : (r[0] & 0xf) * 4;
		if (k <= off) {
			fail("%s: a packet of %zd bytes", name, k);
			return;
		}
		int type = (unsigned char)r[off];
		if (type != want) {
			fail("%s: received ICMP type %d through a filter passing only %d", name, type, want);
			return;
		}
		got++;
	}
	if (!got)
		fail("%s: no echo reply received", name);
}

int main(int argc, char **argv)
{
	const char *mode = argc == 3 ? argv[1] : "";
	int queued = strcmp(mode, "queued") == 0, shutp = strcmp(mode, "shut-ping") == 0, shutr = strcmp(mode, "shut-raw") == 0;
	if (argc != 2 && !queued && !shutp && !shutr) {
		fprintf(stderr, "usage: icmpsock [queued|shut-ping|shut-raw] LOG\n");
		return 2;
	}
	logf = fopen(argv[argc - 1], "w");
	if (!logf)
		return 2;
	setvbuf(logf, NULL, _IOLBF, 0);
	signal(SIGUSR1, on_usr1);
	int one = 1, ttl = 33;

	struct sockaddr_in lo4 = in4("127.0.0.1", 4242), any4 = in4("127.0.0.1", 0), peer4 = in4("127.0.0.2", 0);
	struct sockaddr_in6 lo6 = in6("::1", 4243), any6 = in6("::1", 0);
	sk[P4] = must(socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP), "ping socket");
	must(bind(sk[P4], (void *)&lo4, sizeof(lo4)), "bind ping");
	sk[P6] = must(socket(AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6), "ping6 socket");
	must(bind(sk[P6], (void *)&lo6, sizeof(lo6)), "bind ping6");
	sk[PU] = must(socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP), "unbound ping socket");

	sk[R4] = must(socket(AF_INET, SOCK_RAW, IPPROTO_ICMP), "raw icmp socket");
	struct icmp_filter f4 = { .data = ~(1u << ICMP_ECHOREPLY) };
	must(setsockopt(sk[R4], SOL_RAW, ICMP_FILTER, &f4, sizeof(f4)), "ICMP_FILTER");
	must(setsockopt(sk[R4], IPPROTO_IP, IP_TTL, &ttl, sizeof(ttl)), "IP_TTL");

	sk[R253] = must(socket(AF_INET, SOCK_RAW, 253), "raw 253 socket");
	must(setsockopt(sk[R253], IPPROTO_IP, IP_HDRINCL, &one, sizeof(one)), "IP_HDRINCL");
	must(setsockopt(sk[R253], IPPROTO_IP, IP_NODEFRAG, &one, sizeof(one)), "IP_NODEFRAG");
	must(setsockopt(sk[R253], SOL_SOCKET, SO_BINDTODEVICE, "lo", 3), "SO_BINDTODEVICE");
	must(bind(sk[R253], (void *)&any4, sizeof(any4)), "bind raw 253");
	must(connect(sk[R253], (void *)&peer4, sizeof(peer4)), "connect raw 253");

	sk[R6] = must(socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6), "raw icmpv6 socket");
	struct icmp6_filter { uint32_t data[8]; } f6;
	memset(&f6, 0xff, sizeof(f6)); /* block all ... */
	f6.data[ICMPV6_ECHO_REPLY >> 5] &= ~(1u << (ICMPV6_ECHO_REPLY & 31)); /* ... but echo replies */
	must(setsockopt(sk[R6], SOL_ICMPV6, ICMPV6_FILTER, &f6, sizeof(f6)), "ICMPV6_FILTER");
	must(connect(sk[R6], (void *)&any6, sizeof(any6)), "connect raw icmpv6");

	/* Not connected: ENOTCONN, and shut down all the same. */
	if (shutp)
		shutdown(sk[P4], SHUT_WR);
	if (shutr)
		shutdown(sk[R253], SHUT_WR);
	static char before[4096], after[4096];
	describe_all(before, sizeof(before));
	if (queued && echo(sk[P4], 0, &lo4, sizeof(lo4), 4242, 1) < 0)
		return 3;
	fprintf(logf, "ready\nsockets %s\n", before);
	for (int tick = 1;; tick++) {
		if (finish) {
			describe_all(after, sizeof(after));
			if (strcmp(before, after) != 0)
				fail("sockets changed:\nbefore %s\nafter  %s", before, after);
			if (!queued && !shutp && !shutr) {
				struct sockaddr_in d4 = in4("127.0.0.1", 0);
				struct sockaddr_in6 d6 = in6("::1", 0);
				echo(sk[P4], 0, &d4, sizeof(d4), 4242, 7);
				echo(sk[P6], 1, &d6, sizeof(d6), 4243, 8);
				filtered(sk[R4], 0, ICMP_ECHOREPLY, "raw ICMP socket");
				filtered(sk[R6], 1, ICMPV6_ECHO_REPLY, "raw ICMPv6 socket");
			}
			fprintf(logf, "done ticks=%d\n", tick - 1);
			return failed ? 3 : 0;
		}
		fprintf(logf, "tick %d\n", tick);
		struct timespec ts = { 0, 5 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}
