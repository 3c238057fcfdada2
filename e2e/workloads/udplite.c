// udplite: a UDP-Lite socket that echoes datagrams and a group of two
// TCP listeners sharing a port with SO_REUSEPORT, ticking. Argument 1:
// "plain", or "cscov" to set UDP-Lite checksum coverage (20 sent, 30
// required). SIGUSR1 checks that the sockets are what they were (the
// protocol, the coverage, the reuseport flag and the shared port), logs
// "check ok" or what differs, and exits.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef IPPROTO_UDPLITE
#define IPPROTO_UDPLITE 136
#endif
#define UDPLITE_SEND_CSCOV 10
#define UDPLITE_RECV_CSCOV 11

static volatile sig_atomic_t check;
static void on_usr1(int s) { (void)s; check = 1; }

static int geti(int s, int level, int opt) {
	int v = -1;
	socklen_t l = sizeof v;
	if (getsockopt(s, level, opt, &v, &l) < 0)
		return -2;
	return v;
}

static int port_of(int s) {
	struct sockaddr_in a;
	socklen_t l = sizeof a;
	if (getsockname(s, (struct sockaddr *)&a, &l) < 0)
		return -1;
	return ntohs(a.sin_port);
}

int main(int argc, char **argv) {
	if (argc < 3)
		return 2;
	int cscov = strcmp(argv[1], "cscov") == 0;
	FILE *lg = fopen(argv[argc - 1], "a");
	if (!lg)
		return 2;
	setvbuf(lg, NULL, _IONBF, 0);
	signal(SIGUSR1, on_usr1);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int u = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, IPPROTO_UDPLITE);
	if (u < 0 || bind(u, (struct sockaddr *)&a, sizeof a) < 0) {
		fprintf(lg, "udplite: %s\n", strerror(errno));
		return 1;
	}
	if (cscov && (setsockopt(u, IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV, &(int){20}, sizeof(int)) < 0 ||
		      setsockopt(u, IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV, &(int){30}, sizeof(int)) < 0)) {
		fprintf(lg, "cscov: %s\n", strerror(errno));
		return 1;
	}
	int l[2];
	for (int i = 0; i < 2; i++) {
		l[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (l[i] < 0 || setsockopt(l[i], SOL_SOCKET, SO_REUSEPORT, &(int){1}, sizeof(int)) < 0 ||
		    bind(l[i], (struct sockaddr *)&a, sizeof a) < 0 || listen(l[i], 8) < 0) {
			fprintf(lg, "listener %d: %s\n", i, strerror(errno));
			return 1;
		}
		a.sin_port = htons(port_of(l[0]));
	}
	fprintf(lg, "ports %d %d\n", port_of(u), port_of(l[0]));
	for (int n = 1; !check; n++) {
		char buf[256];
		struct sockaddr_in from;
		socklen_t fl = sizeof from;
		ssize_t k = recvfrom(u, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
		if (k > 0)
			sendto(u, buf, k, 0, (struct sockaddr *)&from, fl);
		fprintf(lg, "tick %d\n", n);
		usleep(10000);
	}
	char bad[512] = "";
	int want_send = cscov ? 20 : 0, want_recv = cscov ? 30 : 0;
	if (geti(u, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_UDPLITE)
		snprintf(bad + strlen(bad), sizeof bad - strlen(bad), " protocol=%d", geti(u, SOL_SOCKET, SO_PROTOCOL));
	if (geti(u, IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV) != want_send || geti(u, IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV) != want_recv)
		snprintf(bad + strlen(bad), sizeof bad - strlen(bad), " cscov=%d/%d", geti(u, IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV),
			 geti(u, IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV));
	for (int i = 0; i < 2; i++)
		if (geti(l[i], SOL_SOCKET, SO_REUSEPORT) != 1 || geti(l[i], SOL_SOCKET, SO_ACCEPTCONN) != 1)
			snprintf(bad + strlen(bad), sizeof bad - strlen(bad), " listener%d reuseport=%d listening=%d", i,
				 geti(l[i], SOL_SOCKET, SO_REUSEPORT), geti(l[i], SOL_SOCKET, SO_ACCEPTCONN));
	if (port_of(l[0]) != port_of(l[1]))
		snprintf(bad + strlen(bad), sizeof bad - strlen(bad), " ports %d %d", port_of(l[0]), port_of(l[1]));
	fprintf(lg, bad[0] ? "check bad:%s\n" : "check ok%s\n", bad);
	return bad[0] ? 1 : 0;
}
