package netlock

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The nftables lock's table, sets, chains and rules, made over netfilter
// netlink in one batch: the rules of rules.go's comment, as nft(8) would
// compile them (an inet table's "ip daddr" is "meta nfproto ipv4" first,
// "tcp dport" "meta l4proto tcp" first).

// Verdicts (include/uapi/linux/netfilter.h), which x/sys/unix lacks.
const (
	nfDrop   = 0
	nfAccept = 1
)

// hookPriority: before conntrack (NF_IP_PRI_CONNTRACK is -200), so
// nothing of a locked connection reaches it.
var hookPriority int32 = -300

// nft's own type numbers for a set's key (nftables' datatype.h:
// TYPE_IPADDR, TYPE_IP6ADDR, TYPE_INET_SERVICE; a concatenation shifts
// each by TYPE_BITS, 6): the kernel keeps them for nft list to print the
// elements.
const (
	nftTypeIPv4    = 7
	nftTypeIPv6    = 8
	nftTypeService = 13
)

func nftConcat(types ...uint32) uint32 {
	var t uint32
	for _, x := range types {
		t = t<<6 | x
	}
	return t
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// expr is one expression of a rule.
type expr func(m *nfmsg)

func (m *nfmsg) expr(name string, data func()) {
	m.nest(unix.NFTA_LIST_ELEM)
	m.str(unix.NFTA_EXPR_NAME, name)
	m.nest(unix.NFTA_EXPR_DATA)
	data()
	m.unnest()
	m.unnest()
}

func exMeta(key, dreg uint32) expr {
	return func(m *nfmsg) {
		m.expr("meta", func() {
			m.attr(unix.NFTA_META_DREG, be32(dreg))
			m.attr(unix.NFTA_META_KEY, be32(key))
		})
	}
}

func exCmp(op, sreg uint32, v []byte) expr {
	return func(m *nfmsg) {
		m.expr("cmp", func() {
			m.attr(unix.NFTA_CMP_SREG, be32(sreg))
			m.attr(unix.NFTA_CMP_OP, be32(op))
			m.nest(unix.NFTA_CMP_DATA)
			m.attr(unix.NFTA_DATA_VALUE, v)
			m.unnest()
		})
	}
}

func exPayload(base, off, n, dreg uint32) expr {
	return func(m *nfmsg) {
		m.expr("payload", func() {
			m.attr(unix.NFTA_PAYLOAD_DREG, be32(dreg))
			m.attr(unix.NFTA_PAYLOAD_BASE, be32(base))
			m.attr(unix.NFTA_PAYLOAD_OFFSET, be32(off))
			m.attr(unix.NFTA_PAYLOAD_LEN, be32(n))
		})
	}
}

func exBitwise(reg uint32, mask, xor []byte) expr {
	return func(m *nfmsg) {
		m.expr("bitwise", func() {
			m.attr(unix.NFTA_BITWISE_SREG, be32(reg))
			m.attr(unix.NFTA_BITWISE_DREG, be32(reg))
			m.attr(unix.NFTA_BITWISE_LEN, be32(uint32(len(mask))))
			m.nest(unix.NFTA_BITWISE_MASK)
			m.attr(unix.NFTA_DATA_VALUE, mask)
			m.unnest()
			m.nest(unix.NFTA_BITWISE_XOR)
			m.attr(unix.NFTA_DATA_VALUE, xor)
			m.unnest()
		})
	}
}

func exLookup(set string, id, sreg uint32) expr {
	return func(m *nfmsg) {
		m.expr("lookup", func() {
			m.str(unix.NFTA_LOOKUP_SET, set)
			m.attr(unix.NFTA_LOOKUP_SET_ID, be32(id))
			m.attr(unix.NFTA_LOOKUP_SREG, be32(sreg))
		})
	}
}

func exVerdict(code uint32) expr {
	return func(m *nfmsg) {
		m.expr("immediate", func() {
			m.attr(unix.NFTA_IMMEDIATE_DREG, be32(unix.NFT_REG_VERDICT))
			m.nest(unix.NFTA_IMMEDIATE_DATA)
			m.nest(unix.NFTA_DATA_VERDICT)
			m.attr(unix.NFTA_VERDICT_CODE, be32(code))
			m.unnest()
			m.unnest()
		})
	}
}

const (
	nh = unix.NFT_PAYLOAD_NETWORK_HEADER
	th = unix.NFT_PAYLOAD_TRANSPORT_HEADER
	r1 = unix.NFT_REG_1
	r0 = unix.NFT_REG32_00 // the first 32-bit register: keys are loaded from here
)

// Offsets in the IPv4 and IPv6 headers and in the TCP header.
const (
	ip4Src, ip4Dst = 12, 16
	ip6Src, ip6Dst = 8, 24
	tcpSport       = 0
	tcpDport       = 2
	tcpFlags       = 13
	tcpSYN, tcpACK = 0x02, 0x10
)

// fieldsOf loads the fields (payload base, offset, length) into
// consecutive 32-bit registers from r0, each field rounded up to whole
// registers, as a concatenation's key lays them out.
func fieldsOf(f ...[3]uint32) []expr {
	var es []expr
	reg := uint32(r0)
	for _, x := range f {
		es = append(es, exPayload(x[0], x[1], x[2], reg))
		reg += (x[2] + 3) / 4
	}
	return es
}

// nftSetDef is one set of the lock's table.
type nftSetDef struct {
	name    string
	keyType uint32
	keyLen  uint32
}

var nftSets = []nftSetDef{
	{"conn4", nftConcat(nftTypeIPv4, nftTypeService, nftTypeIPv4, nftTypeService), 16},
	{"conn6", nftConcat(nftTypeIPv6, nftTypeService, nftTypeIPv6, nftTypeService), 40},
	{"listen4", nftConcat(nftTypeIPv4, nftTypeService), 8},
	{"listen6", nftConcat(nftTypeIPv6, nftTypeService), 20},
	{"listenany4", nftTypeService, 2},
	{"listenany6", nftTypeService, 2},
}

// setID is the batch-local id of set name (its index + 1).
func setID(name string) uint32 {
	for i, s := range nftSets {
		if s.name == name {
			return uint32(i + 1)
		}
	}
	panic("netlock: no set " + name)
}

// nftCreate makes table inet name with its sets, chains and rules.
func nftCreate(netns *os.File, name string) error {
	ipv4, ipv6, tcp := []byte{unix.NFPROTO_IPV4}, []byte{unix.NFPROTO_IPV6}, []byte{unix.IPPROTO_TCP}
	mark := ne.AppendUint32(nil, Mark) // meta mark is host-endian
	isV4 := []expr{exMeta(unix.NFT_META_NFPROTO, r1), exCmp(unix.NFT_CMP_EQ, r1, ipv4)}
	isV6 := []expr{exMeta(unix.NFT_META_NFPROTO, r1), exCmp(unix.NFT_CMP_EQ, r1, ipv6)}
	isTCP := []expr{exMeta(unix.NFT_META_L4PROTO, r1), exCmp(unix.NFT_CMP_EQ, r1, tcp)}
	isSYN := append(isTCP[:len(isTCP):len(isTCP)], exPayload(th, tcpFlags, 1, r1),
		exBitwise(r1, []byte{tcpSYN | tcpACK}, []byte{0}), exCmp(unix.NFT_CMP_EQ, r1, []byte{tcpSYN}))
	markAccept := []expr{exMeta(unix.NFT_META_MARK, r1), exCmp(unix.NFT_CMP_EQ, r1, mark), exVerdict(nfAccept)}
	cat := func(parts ...[]expr) []expr {
		var es []expr
		for _, p := range parts {
			es = append(es, p...)
		}
		return es
	}
	drop := func(set string) []expr { return []expr{exLookup(set, setID(set), r0), exVerdict(nfDrop)} }
	chains := []struct {
		name  string
		hook  uint32
		rules [][]expr
	}{
		{"input", unix.NF_INET_LOCAL_IN, [][]expr{
			markAccept,
			cat(isV4, isTCP, fieldsOf([3]uint32{nh, ip4Dst, 4}, [3]uint32{th, tcpDport, 2}, [3]uint32{nh, ip4Src, 4}, [3]uint32{th, tcpSport, 2}), drop("conn4")),
			cat(isV6, isTCP, fieldsOf([3]uint32{nh, ip6Dst, 16}, [3]uint32{th, tcpDport, 2}, [3]uint32{nh, ip6Src, 16}, [3]uint32{th, tcpSport, 2}), drop("conn6")),
			cat(isSYN, isV4, fieldsOf([3]uint32{nh, ip4Dst, 4}, [3]uint32{th, tcpDport, 2}), drop("listen4")),
			cat(isSYN, isV6, fieldsOf([3]uint32{nh, ip6Dst, 16}, [3]uint32{th, tcpDport, 2}), drop("listen6")),
			cat(isSYN, isV4, fieldsOf([3]uint32{th, tcpDport, 2}), drop("listenany4")),
			cat(isSYN, isV6, fieldsOf([3]uint32{th, tcpDport, 2}), drop("listenany6")),
		}},
		{"output", unix.NF_INET_LOCAL_OUT, [][]expr{
			markAccept,
			cat(isV4, isTCP, fieldsOf([3]uint32{nh, ip4Src, 4}, [3]uint32{th, tcpSport, 2}, [3]uint32{nh, ip4Dst, 4}, [3]uint32{th, tcpDport, 2}), drop("conn4")),
			cat(isV6, isTCP, fieldsOf([3]uint32{nh, ip6Src, 16}, [3]uint32{th, tcpSport, 2}, [3]uint32{nh, ip6Dst, 16}, [3]uint32{th, tcpDport, 2}), drop("conn6")),
		}},
	}
	c, err := openNF(netns)
	if err != nil {
		return err
	}
	defer c.close()
	const create = unix.NLM_F_REQUEST | unix.NLM_F_CREATE | unix.NLM_F_ACK
	err = c.batch(func(m *nfmsg, seq func() uint32) int {
		n := 0
		m.begin(nftType|unix.NFT_MSG_NEWTABLE, create|unix.NLM_F_EXCL, unix.NFPROTO_INET, seq())
		m.str(unix.NFTA_TABLE_NAME, name)
		m.attr(unix.NFTA_TABLE_FLAGS, be32(0))
		m.end()
		n++
		for _, s := range nftSets {
			m.begin(nftType|unix.NFT_MSG_NEWSET, create|unix.NLM_F_EXCL, unix.NFPROTO_INET, seq())
			m.str(unix.NFTA_SET_TABLE, name)
			m.str(unix.NFTA_SET_NAME, s.name)
			m.attr(unix.NFTA_SET_FLAGS, be32(0))
			m.attr(unix.NFTA_SET_KEY_TYPE, be32(s.keyType))
			m.attr(unix.NFTA_SET_KEY_LEN, be32(s.keyLen))
			m.attr(unix.NFTA_SET_ID, be32(setID(s.name)))
			m.end()
			n++
		}
		for _, ch := range chains {
			m.begin(nftType|unix.NFT_MSG_NEWCHAIN, create|unix.NLM_F_EXCL, unix.NFPROTO_INET, seq())
			m.str(unix.NFTA_CHAIN_TABLE, name)
			m.str(unix.NFTA_CHAIN_NAME, ch.name)
			m.nest(unix.NFTA_CHAIN_HOOK)
			m.attr(unix.NFTA_HOOK_HOOKNUM, be32(ch.hook))
			m.attr(unix.NFTA_HOOK_PRIORITY, be32(uint32(hookPriority)))
			m.unnest()
			m.attr(unix.NFTA_CHAIN_POLICY, be32(nfAccept))
			m.str(unix.NFTA_CHAIN_TYPE, "filter")
			m.end()
			n++
			for _, r := range ch.rules {
				nftRule(m, seq(), name, ch.name, r)
				n++
			}
		}
		return n
	})
	if err != nil {
		return fmt.Errorf("create table inet %s: %w", name, err)
	}
	return nil
}

func nftRule(m *nfmsg, seq uint32, table, chain string, es []expr) {
	m.begin(nftType|unix.NFT_MSG_NEWRULE, unix.NLM_F_REQUEST|unix.NLM_F_CREATE|unix.NLM_F_APPEND|unix.NLM_F_ACK, unix.NFPROTO_INET, seq)
	m.str(unix.NFTA_RULE_TABLE, table)
	m.str(unix.NFTA_RULE_CHAIN, chain)
	m.nest(unix.NFTA_RULE_EXPRESSIONS)
	for _, e := range es {
		e(m)
	}
	m.unnest()
	m.end()
}

// nftLockWhole appends "meta mark != Mark drop" to both chains of table
// inet name.
func nftLockWhole(netns *os.File, name string) error {
	c, err := openNF(netns)
	if err != nil {
		return err
	}
	defer c.close()
	mark := ne.AppendUint32(nil, Mark)
	rule := []expr{exMeta(unix.NFT_META_MARK, r1), exCmp(unix.NFT_CMP_NEQ, r1, mark), exVerdict(nfDrop)}
	err = c.batch(func(m *nfmsg, seq func() uint32) int {
		nftRule(m, seq(), name, "input", rule)
		nftRule(m, seq(), name, "output", rule)
		return 2
	})
	if err != nil {
		return fmt.Errorf("lock the whole namespace in table inet %s: %w", name, err)
	}
	return nil
}
