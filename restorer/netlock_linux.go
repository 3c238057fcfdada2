package restorer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"godwit/internal/actions"
	"godwit/internal/netlock"
)

// adoptNetLock takes over the network lock the dump kept (its record in
// the images, see dumper/netlock_linux.go): from here it is removed once
// the connections are restored, when the restore fails, or by its guard
// if godwit dies. nil: no lock, or --network-lock skip.
func adoptNetLock(o Options) (*netlock.Lock, error) {
	if o.NetworkLock == netlock.Skip {
		return nil, nil
	}
	b, err := os.ReadFile(filepath.Join(o.ImagesDir, netlock.RecordFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	rec, err := netlock.ParseRecord(b)
	if err != nil {
		return nil, err
	}
	return netlock.Adopt(rec)
}

// unlockNetwork removes the lock; for a whole namespace the
// network-unlock scripts run first, as in CRIU.
func unlockNetwork(l *netlock.Lock, pid int, scripts *actions.Scripts) error {
	if l == nil {
		return nil
	}
	var serr error
	if l.Netns() {
		serr = scripts.Run(actions.NetworkUnlock, pid)
	}
	if err := errors.Join(serr, l.Unlock()); err != nil {
		return fmt.Errorf("network unlock: %w", err)
	}
	return nil
}

func (r *Restorer) unlockNetwork() error {
	l := r.netLock
	if l == nil {
		return nil
	}
	r.netLock = nil
	if err := unlockNetwork(l, r.img.pid, r.scripts); err != nil {
		return err
	}
	r.log.Infof("restore %d: network unlocked (%s)", r.img.pid, l.Name())
	return nil
}
