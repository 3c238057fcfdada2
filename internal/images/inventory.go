package images

import (
	"fmt"
	"os"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	"google.golang.org/protobuf/proto"
)

// Image format versions (criu/include/magic.h).
const (
	ImagesV1   = 1 // no IMG_COMMON prefix
	ImagesV1_1 = 2 // what CRIU writes since 1.x, and godwit
)

// Network lock methods as CRIU numbers them (--network-lock).
const (
	NetworkLockIptables = 0
	NetworkLockNftables = 1
	NetworkLockSkip     = 2
)

// InventoryOptions are the dump-specific fields of inventory.img; the rest
// are set as CRIU 3.17/4.x sets them (img_version 2, fdinfo_per_id,
// ns_per_id, lsmtype).
type InventoryOptions struct {
	// RootIDs are the namespace/object ids of the dumping tool itself; the
	// restorer compares task ids with them to see which namespaces are
	// shared with the host.
	RootIDs           *criu_core.TaskKobjIdsEntry
	RootCgSet         uint32             // cgroup set id of the root task; 0: none
	LSM               *inventory.Lsmtype // nil: detect the host's
	TCPClose          bool
	NetworkLockMethod uint32
	DumpUptime        uint64  // pre-dump/track-mem only; 0: unset
	PreDumpMode       *uint32 // pre-dump only
	RunID             string  // dump_criu_run_id; "": unset
}

// NewInventory builds the inventory entry CRIU would write for o.
func NewInventory(o InventoryOptions) *inventory.InventoryEntry {
	lsm := HostLSM()
	if o.LSM != nil {
		lsm = *o.LSM
	}
	inv := &inventory.InventoryEntry{
		ImgVersion:        proto.Uint32(ImagesV1_1),
		FdinfoPerId:       proto.Bool(true),
		NsPerId:           proto.Bool(true),
		Lsmtype:           lsm.Enum(),
		RootIds:           o.RootIDs,
		NetworkLockMethod: proto.Uint32(o.NetworkLockMethod),
		PreDumpMode:       o.PreDumpMode,
	}
	if o.RootCgSet != 0 {
		inv.RootCgSet = proto.Uint32(o.RootCgSet)
	}
	if o.TCPClose {
		inv.TcpClose = proto.Bool(true)
	}
	if o.DumpUptime != 0 {
		inv.DumpUptime = proto.Uint64(o.DumpUptime)
	}
	if o.RunID != "" {
		inv.DumpCriuRunId = proto.String(o.RunID)
	}
	return inv
}

// WriteInventory writes inventory.img for o.
func WriteInventory(d *Dir, o InventoryOptions) error {
	return Write(d, InventoryImg, NewInventory(o))
}

// ReadInventory reads inventory.img and checks its version as CRIU does.
func ReadInventory(d *Dir) (*inventory.InventoryEntry, error) {
	inv, err := ReadOne[*inventory.InventoryEntry](d, InventoryImg)
	if err != nil {
		return nil, err
	}
	switch v := inv.GetImgVersion(); v {
	case ImagesV1_1:
	case ImagesV1:
		return nil, fmt.Errorf("images: %s: images v1 (without common magic) are not supported", InventoryImg)
	default:
		return nil, fmt.Errorf("images: %s: unsupported images version %d", InventoryImg, v)
	}
	if inv.RootCgSet != nil && inv.GetRootCgSet() == 0 {
		return nil, fmt.Errorf("images: %s: corrupted root cgset", InventoryImg)
	}
	return inv, nil
}

// HostLSM reports the host's LSM the way CRIU classifies it.
func HostLSM() inventory.Lsmtype {
	if _, err := os.Stat("/sys/kernel/security/apparmor"); err == nil {
		return inventory.Lsmtype_APPARMOR
	}
	if _, err := os.Stat("/sys/fs/selinux/enforce"); err == nil {
		return inventory.Lsmtype_SELINUX
	}
	return inventory.Lsmtype_NO_LSM
}
