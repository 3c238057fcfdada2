package criuimg

import (
	"fmt"
	"slices"

	"godwit/internal/images"
	"godwit/internal/model"
)

// GodwitIPCImg names the godwit image of IPC namespace id: what CRIU's
// ipcns images have no field for (which semaphore sets had a semop,
// sem_otime non-zero), written beside them only when there is some.
func GodwitIPCImg(id uint32) string { return fmt.Sprintf("godwit-ipcns-%d.json", id) }

type godwitIPC struct {
	Version int `json:"version"`
	// SemOperated are the ids of the sets with model.SysVSem.Operated.
	SemOperated []int32 `json:"sem_operated,omitempty"`
}

// writeGodwitIPC writes ns's godwit image if it has anything to hold.
func writeGodwitIPC(d *images.Dir, ns *model.IPCNamespace, written func(string)) error {
	g := godwitIPC{Version: godwitVersion}
	for _, s := range ns.Sem {
		if s.Operated {
			g.SemOperated = append(g.SemOperated, s.Desc.ID)
		}
	}
	if len(g.SemOperated) == 0 {
		return nil
	}
	return writeJSONImage(d, GodwitIPCImg(ns.ID), g, written)
}

// readGodwitIPC merges ns's godwit image, if any, into ns (its sets
// read), refusing an id that names no set.
func readGodwitIPC(d *images.Dir, ns *model.IPCNamespace) error {
	return readJSONImage(d, GodwitIPCImg(ns.ID), func(b []byte) error { return mergeGodwitIPC(b, ns) })
}

func mergeGodwitIPC(b []byte, ns *model.IPCNamespace) error {
	var g godwitIPC
	if err := decodeStrict(b, &g); err != nil {
		return err
	}
	if g.Version < 1 || g.Version > godwitVersion {
		return fmt.Errorf("version %d (this godwit reads %d)", g.Version, godwitVersion)
	}
	for _, id := range g.SemOperated {
		i := slices.IndexFunc(ns.Sem, func(s model.SysVSem) bool { return s.Desc.ID == id })
		if i < 0 {
			return fmt.Errorf("semaphore set %d: not in the dump", id)
		}
		ns.Sem[i].Operated = true
	}
	return nil
}
