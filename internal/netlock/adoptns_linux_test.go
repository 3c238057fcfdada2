package netlock

import (
	"strings"
	"testing"
	"time"

	"godwit/internal/netnsid"
)

// A lock kept in namespace X records X; adopted from another namespace
// it is looked for in X: removed there when a task in X makes X
// reachable, left alone (with the command to remove it) when not.
func TestAdoptInLockedNetns(t *testing.T) {
	for _, m := range methods {
		t.Run(string(m), func(t *testing.T) {
			ns := newTestNetns(t)
			id, err := netnsid.Of(ns.path())
			if err != nil {
				t.Fatal(err)
			}
			l, err := New(m, 4247, ns.path())
			if err != nil {
				t.Fatal(err)
			}
			if err := l.LockNetns(); err != nil {
				t.Fatal(err)
			}
			rec, ok := l.Keep()
			if !ok || rec.Ns == nil || *rec.Ns != id {
				t.Fatalf("Keep: %+v %v, want the namespace %v", rec, ok, id)
			}
			probe := &Lock{method: m, name: rec.Name, netns: ns.f}
			defer probe.remove() // whatever a failure left

			// A namespace not reachable from here (gone, or held only
			// by a descriptor elsewhere): left alone, with the command.
			gone := rec
			gone.Ns = &netnsid.ID{Dev: id.Dev, Ino: 1}
			a, err := Adopt(gone)
			if err != nil {
				t.Fatal(err)
			}
			if a.Active() || !strings.Contains(a.Unreached(), l.cleanupScript()) {
				t.Fatalf("unreachable namespace: active %v, note %q", a.Active(), a.Unreached())
			}
			a.Unlock()
			if ok, err := probe.exists(); !ok || err != nil {
				t.Fatalf("lock gone after an unreachable adopt (%v)", err)
			}

			// A task in X: adopted there, removed there.
			sleep := commandIn(ns.f, "sleep", "60")
			if err := sleep.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { sleep.Process.Kill(); sleep.Wait() }()
			// nsenter execs sleep in place: wait until it is in X.
			for i := 0; ; i++ {
				if got, err := netnsid.OfTask(sleep.Process.Pid); err == nil && got == id {
					break
				}
				if i == 1000 {
					t.Fatal("sleep never entered the namespace")
				}
				time.Sleep(10 * time.Millisecond)
			}
			a, err = Adopt(rec)
			if err != nil {
				t.Fatal(err)
			}
			if !a.Active() || a.Unreached() != "" || !strings.HasPrefix(a.RemoveCommand(), "nsenter --net=") {
				t.Fatalf("reachable namespace: active %v, note %q, remove %q", a.Active(), a.Unreached(), a.RemoveCommand())
			}
			if err := a.Unlock(); err != nil {
				t.Fatal(err)
			}
			if ok, err := probe.exists(); ok || err != nil {
				t.Fatalf("lock still in its namespace after the unlock (%v)", err)
			}
		})
	}
}
