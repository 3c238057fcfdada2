package criuimg

import (
	"reflect"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pipe"
	"google.golang.org/protobuf/proto"

	"godwit/internal/model"
)

// Owners round-trip on every kind, a FIFO's through its REG entry.
func TestOwnersRoundTrip(t *testing.T) {
	tr := kindsTree(t)
	owners := map[model.ID]model.FileOwner{
		10: {Type: 1, Pid: tr.Root().Pid, UID: 1000, EUID: 1001, Signum: 35}, // pipe
		13: {Type: 2, Pid: tr.Root().Pid, Signum: 0},                         // eventfd, process group
		17: {Type: 0, Pid: tr.Root().Pid, UID: 5, EUID: 6},                   // FIFO
		18: {Signum: 40},                                                     // unix socket: signal alone
	}
	for id, o := range owners {
		tr.Files[id].Owner = o
	}
	dir, _ := writeTree(t, tr)
	got := readTree(t, dir)
	for id := range tr.Files {
		f := got.Files[id]
		if f == nil {
			t.Fatalf("file %d not read", id)
		}
		if want := owners[id]; !reflect.DeepEqual(f.Owner, want) {
			t.Errorf("file %d: owner read %+v, wrote %+v", id, f.Owner, want)
		}
	}
}

func TestOwnerRefused(t *testing.T) {
	for _, c := range []struct {
		fo   *fown.FownEntry
		want string
	}{
		{&fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(3), Pid: proto.Uint32(5)}, "owner of type 3"},
		{&fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(99), PidType: proto.Uint32(0), Pid: proto.Uint32(0)}, "owner signal 99"},
		{&fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(1), Pid: proto.Uint32(1 << 30)}, "owner pid"},
	} {
		e := &fdinfo.FileEntry{Type: fdinfo.FdTypes_PIPE.Enum(), Id: proto.Uint32(1),
			Pipe: &pipe.PipeEntry{Id: proto.Uint32(1), PipeId: proto.Uint32(2), Flags: proto.Uint32(0), Fown: c.fo}}
		files := map[model.ID]*model.File{1: {ID: 1, Kind: model.Pipe}}
		if err := readOwners([]*fdinfo.FileEntry{e}, files); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.fo, err, c.want)
		}
	}
}
