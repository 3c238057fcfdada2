package service

import (
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"google.golang.org/protobuf/proto"
)

// ext_unix_sk and unix_sk_ino reach the options the CLI's --ext-unix-sk
// and --external unix[INO] set; a command whose CLI refuses them refuses
// the field by name.
func TestMapExtUnixSk(t *testing.T) {
	r := &rpc.CriuOpts{ExtUnixSk: proto.Bool(true), UnixSkIno: []*rpc.UnixSk{{Inode: proto.Uint32(4242)}}}
	o, err := mapOptions("dump", r, func(string, string) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	if !o.ExtUnixSk {
		t.Error("ext_unix_sk did not set ExtUnixSk")
	}
	if len(o.External) != 1 || o.External[0].String() != "unix[4242]" {
		t.Errorf("unix_sk_ino: External %v, want [unix[4242]]", o.External)
	}
	_, err = mapOptions("restore", &rpc.CriuOpts{ExtUnixSk: proto.Bool(true)}, func(_, opt string) bool { return opt == "ext-unix-sk" })
	if err == nil || err.Error() != "criu_opts.ext_unix_sk (--ext-unix-sk) is not supported yet" {
		t.Errorf("refused ext_unix_sk: %v", err)
	}
}
