// sockbpf: sockets with BPF programs attached, ticking. Argument 1:
//   filter      two UDP echo sockets (IPv4, IPv6) with a classic BPF
//               filter (SO_ATTACH_FILTER) that drops datagrams starting
//               with 'x'; logs "ports P4 P6".
//   ebpf-filter a UDP socket with an eBPF filter (SO_ATTACH_BPF).
//   reuseport   two TCP listeners in a SO_REUSEPORT group, no program;
//               logs "port P".
//   steer-cbpf  the same, steered by a classic program
//               (SO_ATTACH_REUSEPORT_CBPF).
//   steer-ebpf  two UDP sockets in a SO_REUSEPORT group steered by an
//               eBPF program (SO_ATTACH_REUSEPORT_EBPF).
// SIGUSR1 checks that each socket still has its program (the filter read
// back is the one attached; an eBPF filter still answers EACCES; the
// steering program can be detached; without one, the listeners still
// share their port and none can be detached), logs "check ok" or what
// differs, and exits.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/bpf.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SO_ATTACH_REUSEPORT_CBPF
#define SO_ATTACH_REUSEPORT_CBPF 51
#endif
#ifndef SO_ATTACH_REUSEPORT_EBPF
#define SO_ATTACH_REUSEPORT_EBPF 52
#endif
#ifndef SO_DETACH_REUSEPORT_BPF
#define SO_DETACH_REUSEPORT_BPF 68
#endif

static volatile sig_atomic_t check;
static void on_usr1(int s) { (void)s; check = 1; }

// Drop a UDP datagram whose first byte is 'x' (the filter sees the UDP
// header first: the payload starts at offset 8), keep the others.
static struct sock_filter drop_x[] = {
	BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 8),
	BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 'x', 0, 1),
	BPF_STMT(BPF_RET | BPF_K, 0),
	BPF_STMT(BPF_RET | BPF_K, 0xffff),
};

static int port_of(int s) {
	struct sockaddr_storage a;
	socklen_t l = sizeof a;
	if (getsockname(s, (struct sockaddr *)&a, &l) < 0)
		return -1;
	if (a.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
	return ntohs(((struct sockaddr_in *)&a)->sin_port);
}

static int udp(int family, int port, int reuseport) {
	int s = socket(family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (s < 0)
		return -1;
	if (reuseport && setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &(int){1}, sizeof(int)) < 0)
		return -1;
	int r;
	if (family == AF_INET6) {
		struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT, .sin6_port = htons(port)};
		r = bind(s, (struct sockaddr *)&a, sizeof a);
	} else {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons(port)};
		r = bind(s, (struct sockaddr *)&a, sizeof a);
	}
	return r < 0 ? -1 : s;
}

// ebpf_prog loads a socket filter program that returns ret.
static int ebpf_prog(int ret) {
	struct bpf_insn insns[] = {
		{.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = ret},
		{.code = BPF_JMP | BPF_EXIT},
	};
	union bpf_attr at;
	memset(&at, 0, sizeof at);
	at.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
	at.insns = (unsigned long)insns;
	at.insn_cnt = 2;
	at.license = (unsigned long)"MIT";
	return syscall(SYS_bpf, BPF_PROG_LOAD, &at, sizeof at);
}

static char bad[512];
static void badf(const char *what, int i) {
	snprintf(bad + strlen(bad), sizeof bad - strlen(bad), " %s%d(%s)", what, i, strerror(errno));
}

int main(int argc, char **argv) {
	if (argc < 3)
		return 2;
	const char *mode = argv[1];
	FILE *lg = fopen(argv[argc - 1], "a");
	if (!lg)
		return 2;
	setvbuf(lg, NULL, _IONBF, 0);
	signal(SIGUSR1, on_usr1);
	int s[2] = {-1, -1}, n = 0;
	struct sock_fprog fp = {.len = sizeof drop_x / sizeof drop_x[0], .filter = drop_x};
	if (strcmp(mode, "filter") == 0) {
		s[0] = udp(AF_INET, 0, 0);
		s[1] = udp(AF_INET6, 0, 0);
		n = 2;
		for (int i = 0; i < n; i++)
			if (s[i] < 0 || setsockopt(s[i], SOL_SOCKET, SO_ATTACH_FILTER, &fp, sizeof fp) < 0) {
				fprintf(lg, "filter %d: %s\n", i, strerror(errno));
				return 1;
			}
		fprintf(lg, "ports %d %d\n", port_of(s[0]), port_of(s[1]));
	} else if (strcmp(mode, "ebpf-filter") == 0) {
		int p = ebpf_prog(0xffff);
		s[0] = udp(AF_INET, 0, 0);
		n = 1;
		if (p < 0 || s[0] < 0 || setsockopt(s[0], SOL_SOCKET, SO_ATTACH_BPF, &p, sizeof p) < 0) {
			fprintf(lg, "ebpf filter: %s\n", strerror(errno));
			return 1;
		}
		close(p);
	} else if (strcmp(mode, "steer-cbpf") == 0 || strcmp(mode, "reuseport") == 0) {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		struct sock_filter first[] = {BPF_STMT(BPF_RET | BPF_K, 0)};
		struct sock_fprog f0 = {.len = 1, .filter = first};
		n = 2;
		for (int i = 0; i < n; i++) {
			s[i] = socket(AF_INET, SOCK_STREAM, 0);
			if (s[i] < 0 || setsockopt(s[i], SOL_SOCKET, SO_REUSEPORT, &(int){1}, sizeof(int)) < 0 ||
			    bind(s[i], (struct sockaddr *)&a, sizeof a) < 0 || listen(s[i], 8) < 0) {
				fprintf(lg, "listener %d: %s\n", i, strerror(errno));
				return 1;
			}
			a.sin_port = htons(port_of(s[0]));
		}
		if (strcmp(mode, "reuseport") == 0)
			fprintf(lg, "port %d\n", port_of(s[0]));
		else if (setsockopt(s[0], SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &f0, sizeof f0) < 0) {
			fprintf(lg, "SO_ATTACH_REUSEPORT_CBPF: %s\n", strerror(errno));
			return 1;
		}
	} else if (strcmp(mode, "steer-ebpf") == 0) {
		int p = ebpf_prog(0);
		n = 2;
		s[0] = udp(AF_INET, 0, 1);
		s[1] = udp(AF_INET, port_of(s[0]), 1);
		if (p < 0 || s[0] < 0 || s[1] < 0 || setsockopt(s[1], SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &p, sizeof p) < 0) {
			fprintf(lg, "SO_ATTACH_REUSEPORT_EBPF: %s\n", strerror(errno));
			return 1;
		}
		close(p);
	} else {
		return 2;
	}
	for (int t = 1; !check; t++) {
		for (int i = 0; i < n; i++) {
			char buf[256];
			struct sockaddr_storage from;
			socklen_t fl = sizeof from;
			ssize_t k = recvfrom(s[i], buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
			if (k > 0)
				sendto(s[i], buf, k, 0, (struct sockaddr *)&from, fl);
		}
		fprintf(lg, "tick %d\n", t);
		usleep(10000);
	}
	for (int i = 0; i < n; i++) {
		struct sock_filter got[16];
		socklen_t gl = 16;
		if (strcmp(mode, "filter") == 0) {
			if (getsockopt(s[i], SOL_SOCKET, SO_GET_FILTER, got, &gl) < 0)
				badf("getfilter", i);
			else if (gl != fp.len || memcmp(got, drop_x, sizeof drop_x) != 0)
				snprintf(bad + strlen(bad), sizeof bad - strlen(bad), " filter%d differs (%u instructions)", i, gl);
		} else if (strcmp(mode, "ebpf-filter") == 0) {
			if (getsockopt(s[i], SOL_SOCKET, SO_GET_FILTER, got, &gl) == 0 || errno != EACCES)
				badf("no eBPF filter on ", i);
		} else if (strcmp(mode, "reuseport") == 0) {
			if (port_of(s[i]) != port_of(s[0]) || setsockopt(s[i], SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, &(int){0}, sizeof(int)) == 0 ||
			    errno != ENOENT)
				badf("listener ", i);
		} else if (i == 0 && setsockopt(s[i], SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, &(int){0}, sizeof(int)) < 0) {
			badf("no steering program on ", i);
		}
	}
	fprintf(lg, bad[0] ? "check bad:%s\n" : "check ok%s\n", bad);
	return bad[0] ? 1 : 0;
}
