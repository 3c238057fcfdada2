package criuimg

import (
	"fmt"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"godwit/internal/model"
)

// File owners (F_SETOWN_EX, F_SETSIG): every kind's entry has a fown
// field (a FIFO's is in the REG entry it names). They are set and read
// here, by reflection, once for every kind. pid_type holds the
// F_OWNER_* value of F_GETOWN_EX, as CRIU stores it.

// maxOwnerType is F_OWNER_PGRP, the last type F_SETOWN_EX takes.
const maxOwnerType = 2

func fownEntry(o model.FileOwner) *fown.FownEntry {
	return &fown.FownEntry{Uid: proto.Uint32(o.UID), Euid: proto.Uint32(o.EUID), Signum: proto.Uint32(uint32(o.Signum)),
		PidType: proto.Uint32(uint32(o.Type)), Pid: proto.Uint32(uint32(o.Pid))}
}

// fownField finds the kind's message set in e and its fown field.
func fownField(e *fdinfo.FileEntry) (protoreflect.Message, protoreflect.FieldDescriptor) {
	var msg protoreflect.Message
	var fd protoreflect.FieldDescriptor
	e.ProtoReflect().Range(func(f protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if f.Kind() != protoreflect.MessageKind || f.IsList() || f.IsMap() {
			return true
		}
		if ff := f.Message().Fields().ByName("fown"); ff != nil {
			msg, fd = v.Message(), ff
			return false
		}
		return true
	})
	return msg, fd
}

// setOwners writes the owners of t's files into their entries.
func setOwners(t *model.Tree, entries []proto.Message) error {
	owned := false
	for _, f := range t.Files {
		if f.Owner != (model.FileOwner{}) {
			owned = true
			break
		}
	}
	if !owned {
		return nil
	}
	byID := map[uint32]*fdinfo.FileEntry{}
	for _, m := range entries {
		if e, ok := m.(*fdinfo.FileEntry); ok {
			byID[e.GetId()] = e
		}
	}
	for _, m := range entries {
		e, ok := m.(*fdinfo.FileEntry)
		if !ok {
			continue
		}
		f := t.Files[model.ID(e.GetId())]
		if f == nil || f.Owner == (model.FileOwner{}) {
			continue
		}
		if ff := e.GetFifo(); ff != nil {
			if e = byID[ff.GetRegfId()]; e == nil {
				return fmt.Errorf("file %d: owner: no REG entry %d", f.ID, ff.GetRegfId())
			}
		}
		msg, fd := fownField(e)
		if fd == nil {
			return fmt.Errorf("file %d: an owner (F_SETOWN) on a %v file, whose entry has no fown", f.ID, e.GetType())
		}
		msg.Set(fd, protoreflect.ValueOfMessage(fownEntry(f.Owner).ProtoReflect()))
	}
	return nil
}

// ownerOf reads the owner of entry e; a FIFO's is in the REG entry it
// names (byID).
func ownerOf(e *fdinfo.FileEntry, byID map[uint32]*fdinfo.FileEntry) (model.FileOwner, error) {
	if ff := e.GetFifo(); ff != nil {
		if e = byID[ff.GetRegfId()]; e == nil {
			return model.FileOwner{}, nil // refused where the FIFO is resolved
		}
	}
	msg, fd := fownField(e)
	if fd == nil || !msg.Has(fd) {
		return model.FileOwner{}, nil
	}
	fo, ok := msg.Get(fd).Message().Interface().(*fown.FownEntry)
	if !ok {
		return model.FileOwner{}, fmt.Errorf("fown of an unexpected type")
	}
	o := model.FileOwner{Type: int(fo.GetPidType()), Pid: int(fo.GetPid()), UID: fo.GetUid(), EUID: fo.GetEuid(), Signum: int(fo.GetSignum())}
	if o.Pid == 0 {
		// No owner: CRIU leaves pid_type and the uids as they were.
		o.Type, o.UID, o.EUID = 0, 0, 0
	}
	switch {
	case o.Type < 0 || o.Type > maxOwnerType:
		return o, fmt.Errorf("owner of type %d", fo.GetPidType())
	case o.Pid < 0 || o.Pid > 1<<22: // PID_MAX_LIMIT
		return o, fmt.Errorf("owner pid %d", fo.GetPid())
	case o.Signum < 0 || o.Signum > 64:
		return o, fmt.Errorf("owner signal %d", fo.GetSignum())
	}
	return o, nil
}

// readOwners sets the owners of files from their entries fes.
func readOwners(fes []*fdinfo.FileEntry, files map[model.ID]*model.File) error {
	byID := map[uint32]*fdinfo.FileEntry{}
	for _, e := range fes {
		byID[e.GetId()] = e
	}
	for _, e := range fes {
		f := files[model.ID(e.GetId())]
		if f == nil {
			continue
		}
		o, err := ownerOf(e, byID)
		if err != nil {
			return fmt.Errorf("file %d: %w", f.ID, err)
		}
		f.Owner = o
	}
	return nil
}
