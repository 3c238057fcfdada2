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
	if r.ImagesDir != "/img" || !r.Detach || !r.ShellJob || r.Stats != &out || r.LazyPages {
		t.Fatalf("mapped %+v", r)
	}
	o.LazyPages = true
	if r, err := Restore(o, &out); err != nil || !r.LazyPages {
		t.Fatalf("--lazy-pages: %+v, %v", r, err)
	}
	for _, c := range []struct {
		set  func(*opts.Options)
		want string
	}{
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

func TestLazyPages(t *testing.T) {
	o := opts.New()
	o.ImagesDir, o.PageServer, o.Address, o.Port = "/img", true, "10.0.0.1", 1234
	l, err := LazyPages(o, nil)
	if err != nil || l.ImagesDir != "/img" || l.PageServer != "10.0.0.1:1234" {
		t.Fatalf("mapped %+v, %v", l, err)
	}
	o.Port = 0
	if _, err := LazyPages(o, nil); err == nil {
		t.Fatal("--page-server without --port accepted")
	}
}
