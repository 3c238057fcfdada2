package restorer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"godwit/internal/actions"
	"godwit/internal/logging"
	"godwit/internal/netlock"
	"godwit/internal/netnsid"
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

// checkNetns refuses to restore a tree that had a network namespace of
// its own (the dump's netnsid.RecordFile) into godwit's: godwit does not
// remake a namespace, so the tree would come back in another one than
// it ran in. An image set without the record (CRIU's, or a tree that
// shared godwit's namespace) is not checked.
func checkNetns(o Options) error {
	b, err := os.ReadFile(filepath.Join(o.ImagesDir, netnsid.RecordFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	rec, err := netnsid.ParseRecord(b)
	if err != nil {
		return err
	}
	cur, err := netnsid.Self()
	if err != nil {
		return err
	}
	// The namespace of PID 1 here: on another host, the initial one.
	init, err := netnsid.OfTask(1)
	if err != nil {
		init = netnsid.ID{} // not ours to see (a pid namespace's init gone): only the first test
	}
	return rec.Check(cur, init)
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

// keepNetLock leaves the lock of a restore that failed before its
// unlock point in place, as CRIU does: the peers keep retransmitting
// instead of being reset, and the images still name the lock, so a
// retry adopts it. It logs the lock and how to remove it by hand.
func keepNetLock(l *netlock.Lock, log *logging.Logger, pid int) {
	rec, ok := l.Keep()
	if !ok {
		return // there was none (removed by hand, or a skip lock without namespace)
	}
	if rec.Method == netlock.Skip {
		log.Warnf("restore %d failed: the network stays locked by the network-lock scripts (network-unlock not run)", pid)
		return
	}
	log.Warnf("restore %d failed: network lock %s (%s) kept for a retry; to drop the connections instead, remove it by hand: %s", pid, rec.Name, rec.Method, l.RemoveCommand())
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
	if msg := l.Unreached(); msg != "" {
		// Said once the tree runs without it (a failed restore keeps
		// the record for a retry, which says it again).
		r.log.Warnf("restore %d: %s", r.img.pid, msg)
		return nil
	}
	r.log.Infof("restore %d: network unlocked (%s)", r.img.pid, l.Name())
	return nil
}

// CheckNetns is the restore's network namespace check of the images in
// imagesDir (see checkNetns), for a migration that must know before it
// commits.
func CheckNetns(imagesDir string) error { return checkNetns(Options{ImagesDir: imagesDir}) }
