package netlock

import (
	"fmt"
	"net/netip"
	"strings"
)

// The rules. Packets marked Mark pass (godwit's own: the FIN the
// restore replays to a connection frozen after its peer closed, which must
// reach the socket while the lock is on). Connections are matched by their
// 4-tuple as the tree sees it: packets the tree sends on the output hook, packets it receives on
// the input hook (so a peer on the same host has its packets dropped on
// their way in, not failed on their way out). Priority -300, before
// conntrack, so that nothing of a locked connection reaches it.
//
// nftables (made over netlink: nfrules.go): table inet NAME with sets
// conn4/conn6 of local addr . port . remote addr . port and two base
// chains, which nft list reads back as
//
//	chain input {
//		type filter hook input priority raw; policy accept;
//		meta mark 0x0060d317 accept
//		ip daddr . tcp dport . ip saddr . tcp sport @conn4 drop
//		ip6 daddr . tcp dport . ip6 saddr . tcp sport @conn6 drop
//		tcp flags syn / syn,ack ip daddr . tcp dport @listen4 drop
//		tcp flags syn / syn,ack ip6 daddr . tcp dport @listen6 drop
//		tcp flags syn / syn,ack meta nfproto ipv4 tcp dport @listenany4 drop
//		tcp flags syn / syn,ack meta nfproto ipv6 tcp dport @listenany6 drop
//	}
//	chain output {
//		type filter hook output priority raw; policy accept;
//		meta mark 0x0060d317 accept
//		ip saddr . tcp sport . ip daddr . tcp dport @conn4 drop
//		ip6 saddr . tcp sport . ip6 daddr . tcp dport @conn6 drop
//	}
//
// (listen4/6: address . port; listenany4/6: port). The whole-namespace lock adds
// "meta mark != Mark drop" to both chains. Packets marked Mark pass every
// rule (the peer's FIN that tcprepair replays to a restored connection).
//
// iptables: chains NAME-in and NAME-out in the filter table, jumped to
// first from INPUT and OUTPUT, for iptables and ip6tables.

func (l *Lock) create() error {
	switch l.method {
	case Nftables:
		return nftCreate(l.netns, l.name)
	case Iptables:
		in, out := l.name+"-in", l.name+"-out"
		rules := fmt.Sprintf("*filter\n:%[1]s - [0:0]\n:%[2]s - [0:0]\n-I INPUT 1 -j %[1]s\n-I OUTPUT 1 -j %[2]s\n"+
			"-A %[1]s -m mark --mark %#[3]x -j RETURN\n-A %[2]s -m mark --mark %#[3]x -j RETURN\nCOMMIT\n", in, out, Mark)
		if err := l.run(rules, "iptables-restore", "-w", "--noflush"); err != nil {
			return err
		}
		if err := l.run(rules, "ip6tables-restore", "-w", "--noflush"); err != nil {
			l.removeIptables("iptables")
			return err
		}
		l.v6 = true
		return nil
	}
	return fmt.Errorf("method %s makes no rules", l.method)
}

func (l *Lock) addConns(conns []Conn) error {
	switch l.method {
	case Nftables:
		var k4, k6 [][]byte
		for _, c := range conns {
			if c.v4() {
				k4 = append(k4, connKey(c))
			} else {
				k6 = append(k6, connKey(c))
			}
		}
		return nftAddElems(l.netns, l.name, []setElems{{"conn4", k4}, {"conn6", k6}})
	case Iptables:
		var r4, r6 strings.Builder
		for _, c := range conns {
			b := &r4
			if !c.v4() {
				b = &r6
			}
			la, ra := c.Local.Addr().WithZone(""), c.Remote.Addr().WithZone("")
			fmt.Fprintf(b, "-A %s-in -p tcp -s %s -d %s --sport %d --dport %d -j DROP\n", l.name, ra, la, c.Remote.Port(), c.Local.Port())
			fmt.Fprintf(b, "-A %s-out -p tcp -s %s -d %s --sport %d --dport %d -j DROP\n", l.name, la, ra, c.Local.Port(), c.Remote.Port())
		}
		if r4.Len() > 0 {
			if err := l.run("*filter\n"+r4.String()+"COMMIT\n", "iptables-restore", "-w", "--noflush"); err != nil {
				return err
			}
		}
		if r6.Len() > 0 {
			return l.run("*filter\n"+r6.String()+"COMMIT\n", "ip6tables-restore", "-w", "--noflush")
		}
		return nil
	}
	return nil
}

// addListeners adds SYN-dropping rules for listeners. A wildcard IPv6
// listener may take IPv4 connections too (unless IPV6_V6ONLY, which is
// not known here): both families' requests to its port wait.
func (l *Lock) addListeners(addrs []netip.AddrPort) error {
	switch l.method {
	case Nftables:
		var l4, l6, any4, any6 [][]byte
		for _, a := range addrs {
			p := a.Port()
			port := []byte{byte(p >> 8), byte(p)}
			switch {
			case a.Addr().IsUnspecified() && a.Addr().Is4():
				any4 = append(any4, port)
			case a.Addr().IsUnspecified():
				any4, any6 = append(any4, port), append(any6, port)
			case a.Addr().Is4():
				l4 = append(l4, keyPort(keyAddr(nil, a.Addr()), p))
			default:
				l6 = append(l6, keyPort(keyAddr(nil, a.Addr()), p))
			}
		}
		return nftAddElems(l.netns, l.name, []setElems{{"listen4", l4}, {"listen6", l6}, {"listenany4", any4}, {"listenany6", any6}})
	case Iptables:
		var r4, r6 strings.Builder
		for _, a := range addrs {
			rule := func(b *strings.Builder, dst string) {
				fmt.Fprintf(b, "-A %s-in -p tcp --syn%s --dport %d -j DROP\n", l.name, dst, a.Port())
			}
			switch {
			case a.Addr().IsUnspecified() && a.Addr().Is4():
				rule(&r4, "")
			case a.Addr().IsUnspecified():
				rule(&r4, "")
				rule(&r6, "")
			case a.Addr().Is4():
				rule(&r4, " -d "+a.Addr().String())
			default:
				rule(&r6, " -d "+a.Addr().String())
			}
		}
		if r4.Len() > 0 {
			if err := l.run("*filter\n"+r4.String()+"COMMIT\n", "iptables-restore", "-w", "--noflush"); err != nil {
				return err
			}
		}
		if r6.Len() > 0 {
			return l.run("*filter\n"+r6.String()+"COMMIT\n", "ip6tables-restore", "-w", "--noflush")
		}
	}
	return nil
}

func (l *Lock) addWhole() error {
	switch l.method {
	case Nftables:
		return nftLockWhole(l.netns, l.name)
	case Iptables:
		rules := fmt.Sprintf("*filter\n-A %[1]s-in -m mark ! --mark %#[2]x -j DROP\n-A %[1]s-out -m mark ! --mark %#[2]x -j DROP\nCOMMIT\n", l.name, Mark)
		if err := l.run(rules, "iptables-restore", "-w", "--noflush"); err != nil {
			return err
		}
		return l.run(rules, "ip6tables-restore", "-w", "--noflush")
	}
	return nil
}

// remove deletes the table or the chains.
func (l *Lock) remove() error {
	switch l.method {
	case Nftables:
		return nftDeleteTable(l.netns, l.name)
	case Iptables:
		err := l.removeIptables("iptables")
		if e6 := l.removeIptables("ip6tables"); err == nil {
			err = e6
		}
		return err
	}
	return nil
}

func (l *Lock) removeIptables(tool string) error {
	in, out := l.name+"-in", l.name+"-out"
	return l.run(fmt.Sprintf("*filter\n-D INPUT -j %[1]s\n-D OUTPUT -j %[2]s\n-F %[1]s\n-F %[2]s\n-X %[1]s\n-X %[2]s\nCOMMIT\n", in, out), tool+"-restore", "-w", "--noflush")
}

// exists reports whether the lock's table (or chain) is there.
func (l *Lock) exists() (bool, error) {
	switch l.method {
	case Nftables:
		return nftTableExists(l.netns, l.name)
	case Iptables:
		// iptables-nft's -L of a missing chain is not told apart from
		// other failures: look for it in the table's listing.
		for _, tool := range []string{"iptables-save", "ip6tables-save"} {
			argv := []string{tool, "-t", "filter"}
			out, err := commandIn(l.netns, argv...).CombinedOutput()
			if err != nil {
				return false, fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, firstLine(out))
			}
			if strings.Contains(string(out), "\n:"+l.name+"-in ") {
				return true, nil
			}
		}
	}
	return false, nil
}

// cleanupScript is the shell commands that remove the lock whatever is
// left of it (the iptables guard's last act, and RemoveCommand's
// advice); errors are ignored.
func (l *Lock) cleanupScript() string {
	switch l.method {
	case Nftables:
		return "nft delete table inet " + l.name
	case Iptables:
		var b strings.Builder
		for _, tool := range []string{"iptables", "ip6tables"} {
			for _, c := range [][2]string{{"INPUT", "-in"}, {"OUTPUT", "-out"}} {
				fmt.Fprintf(&b, "%[1]s -w -D %[2]s -j %[3]s%[4]s; %[1]s -w -F %[3]s%[4]s; %[1]s -w -X %[3]s%[4]s; ", tool, c[0], l.name, c[1])
			}
		}
		return b.String()
	}
	return "true"
}
