package engineopts

import (
	"bytes"
	"strings"
	"testing"

	"godwit/internal/opts"
)

func TestDump(t *testing.T) {
	o := opts.New()
	o.Tree, o.ImagesDir, o.LeaveRunning, o.FreezeCgroup = 42, "/img", true, "/sys/fs/cgroup/x"
	d, err := Dump(o)
	if err != nil {
		t.Fatal(err)
	}
	if d.Pid != 42 || d.ImagesDir != "/img" || !d.LeaveRunning || d.FreezeCgroup != "/sys/fs/cgroup/x" || d.PageServer != nil {
		t.Fatalf("mapped %+v", d)
	}
	o.PageServer, o.Address, o.Port = true, "::1", 1234
	if d, err = Dump(o); err != nil || d.PageServer == nil || d.PageServer.Addr != "[::1]:1234" {
		t.Fatalf("page server mapped to %+v, %v", d.PageServer, err)
	}
}

func TestRestore(t *testing.T) {
	var out bytes.Buffer
	o := opts.New()
	o.ImagesDir, o.RestoreDetach, o.ShellJob, o.DisplayStats = "/img", true, true, true
	r, err := Restore(o, &out)
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesDir != "/img" || !r.Detach || !r.ShellJob || r.Stats != &out {
		t.Fatalf("mapped %+v", r)
	}
	for _, c := range []struct {
		set  func(*opts.Options)
		want string
	}{
		{func(o *opts.Options) { o.LazyPages = true }, "--lazy-pages"},
		{func(o *opts.Options) { o.Root = "/new" }, "--root"},
		{func(o *opts.Options) { o.InheritFD = []opts.InheritFD{{FD: 3}} }, "--inherit-fd"},
	} {
		o := opts.New()
		c.set(o)
		if _, err := Restore(o, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Restore: %v, want a refusal naming %s", err, c.want)
		}
	}
}
