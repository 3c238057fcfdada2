package criuimg

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tun"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/model"
)

// tun fds, as CRIU keeps them: a TUNF entry of files.img naming the
// device. The rest (the fd's flags, the device's settings and its link's
// state, which CRIU keeps in the netns's images that godwit does not
// write) is in godwit-tun.json, by file id.

// GodwitTunImg holds the state of the tun fds (godwit image).
const GodwitTunImg = "godwit-tun.json"

type godwitTuns struct {
	Version int                `json:"version"`
	Files   map[uint32]tunFile `json:"files"`
}

type tunFile struct {
	Flags uint32          `json:"flags"`
	State *model.TunState `json:"state"`
}

func tunEntry(f *model.File) *fdinfo.FileEntry {
	id := proto.Uint32(uint32(f.ID))
	e := &tun.TunfileEntry{Id: id, Detached: proto.Bool(false)}
	if f.Tun.Name != "" {
		e.Netdev = proto.String(f.Tun.Name)
	}
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_TUNF.Enum(), Id: id, Tunf: e}
}

// writeTuns writes godwit-tun.json.
func writeTuns(d *images.Dir, t *model.Tree, written func(string)) error {
	g := godwitTuns{Version: godwitVersion, Files: map[uint32]tunFile{}}
	for id, f := range t.Files {
		if f.Kind == model.Tun && f.Tun != nil {
			g.Files[uint32(id)] = tunFile{Flags: f.Flags, State: f.Tun}
		}
	}
	if len(g.Files) == 0 {
		return nil
	}
	if written != nil {
		written(GodwitTunImg)
	}
	b, err := json.Marshal(g)
	if err != nil {
		return err
	}
	w, err := d.Create(GodwitTunImg)
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// readTuns makes each TUNF entry of files.img a Tun file, with its state
// from godwit-tun.json.
func readTuns(d *images.Dir, entries []*fdinfo.FileEntry, files map[model.ID]*model.File) error {
	if len(entries) == 0 {
		return nil
	}
	if !d.Exists(GodwitTunImg) {
		return fmt.Errorf("%s: tun files without %s (CRIU's tun images are not read)", images.FilesImg, GodwitTunImg)
	}
	r, err := d.OpenRead(GodwitTunImg)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(r, maxGodwitImg+1))
	r.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", GodwitTunImg, err)
	}
	var g godwitTuns
	if len(b) > maxGodwitImg || json.Unmarshal(b, &g) != nil || g.Version < 1 || g.Version > godwitVersion {
		return fmt.Errorf("%s: not a godwit tun image of version 1 to %d", GodwitTunImg, godwitVersion)
	}
	for _, e := range entries {
		id := e.GetId()
		te := e.GetTunf()
		tf, ok := g.Files[id]
		if te == nil || !ok || tf.State == nil {
			return fmt.Errorf("%s: tun file %d without its state", images.FilesImg, id)
		}
		if te.GetNetdev() != tf.State.Name || te.GetDetached() || len(tf.State.Name) >= 16 {
			return fmt.Errorf("%s: tun file %d: device %q (detached %v), %q in %s", images.FilesImg, id, te.GetNetdev(), te.GetDetached(), tf.State.Name, GodwitTunImg)
		}
		files[model.ID(id)] = &model.File{ID: model.ID(id), Kind: model.Tun, Path: "/dev/net/tun", Flags: tf.Flags, MntID: -1, Tun: tf.State}
	}
	return nil
}
