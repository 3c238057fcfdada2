package service

import (
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/rpc"

	"godwit/internal/engineopts"
)

// criu_opts.network_lock maps onto --network-lock; a value CRIU does not
// define is refused when the options reach the engine.
func TestNetworkLockOption(t *testing.T) {
	for v, want := range map[rpc.CriuNetworkLockMethod]string{
		rpc.CriuNetworkLockMethod_IPTABLES: "iptables",
		rpc.CriuNetworkLockMethod_NFTABLES: "nftables",
		rpc.CriuNetworkLockMethod_SKIP:     "skip",
	} {
		o, err := mapOptions("dump", &rpc.CriuOpts{NetworkLock: v.Enum()}, func(string, string) bool { return false })
		if err != nil || o.NetworkLock != want {
			t.Fatalf("network_lock %v: %q, %v; want %q", v, o.NetworkLock, err, want)
		}
		if d, err := engineopts.Dump(o); err != nil || string(d.NetworkLock) != want {
			t.Fatalf("network_lock %v: dumper option %q, %v", v, d.NetworkLock, err)
		}
	}
	o, err := mapOptions("restore", &rpc.CriuOpts{NetworkLock: rpc.CriuNetworkLockMethod(9).Enum()}, func(string, string) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := engineopts.Restore(o, nil); err == nil {
		t.Fatal("network_lock 9 accepted")
	}
}
