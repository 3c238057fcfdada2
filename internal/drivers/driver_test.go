package drivers

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The registry's order satisfies every After, starts with the threads
// and ends with the registers, and the rlimits come after the mm.
func TestOrdered(t *testing.T) {
	ds, err := Ordered()
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, d := range ds {
		pos[d.Name()] = i
	}
	for _, d := range ds {
		for _, a := range d.After() {
			if pos[a] >= pos[d.Name()] {
				t.Errorf("%s at %d, before %s at %d which it must follow", d.Name(), pos[d.Name()], a, pos[a])
			}
		}
	}
	if ds[0].Name() != PhaseThreads || ds[len(ds)-1].Name() != PhaseRegisters {
		t.Errorf("order %v: want threads first and registers last", names(ds))
	}
	if pos["rlimits"] < pos[PhaseMM] || pos["creds"] < pos["rlimits"] || pos["signals"] < pos["creds"] {
		t.Errorf("order %v", names(ds))
	}
	for _, d := range ds {
		_, c := d.(Collector)
		_, ic := d.(InjectedCollector)
		_, tc := d.(ThreadCollector)
		_, itc := d.(InjectedThreadCollector)
		_, r := d.(TaskRestorer)
		_, tr := d.(ThreadRestorer)
		if _, engine := d.(phase); !engine && (!(c || ic || tc || itc) && d.Name() != "signals" || !(r || tr) && d.Name() != "session") {
			t.Errorf("driver %s collects or restores nothing", d.Name())
		}
	}
}

func names(ds []Driver) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Name())
	}
	return out
}

// Cycles and unknown dependencies are refused, naming them.
func TestOrderRefuses(t *testing.T) {
	_, err := order([]Driver{phase{name: "a", after: []string{"b"}}, phase{name: "b", after: []string{"a"}}})
	if err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: %v", err)
	}
	_, err = order([]Driver{phase{name: "a", after: []string{"nope"}}})
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown: %v", err)
	}
	_, err = order([]Driver{phase{name: "a"}, phase{name: "a"}})
	if err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate: %v", err)
	}
}

// Each fd kind is found by its sub-driver, or named when unsupported.
func TestClassify(t *testing.T) {
	st := func(mode uint32) *unix.Stat_t { return &unix.Stat_t{Mode: mode} }
	for _, c := range []struct {
		target string
		st     *unix.Stat_t
		kind   string // "" for unsupported
		why    string
	}{
		{"/etc/hostname", st(unix.S_IFREG), "regular file", ""},
		{"/tmp", st(unix.S_IFDIR), "directory", ""},
		{"/tmp/fifo", st(unix.S_IFIFO), "fifo", ""},
		{"/dev/null", &unix.Stat_t{Mode: unix.S_IFCHR, Rdev: unix.Mkdev(1, 3)}, "character device", ""},
		// Stateless devices are known by number, whatever the path
		// (collect checks it, or --evasive-devices finds another).
		{"/tmp/null (deleted)", &unix.Stat_t{Mode: unix.S_IFCHR, Rdev: unix.Mkdev(1, 3)}, "character device", ""},
		{"/dev/null", &unix.Stat_t{Mode: unix.S_IFCHR, Rdev: unix.Mkdev(10, 232)}, "", "character device /dev/null"},
		{"/dev/kvm", st(unix.S_IFCHR), "", "character device /dev/kvm"},
		{"/dev/pts/3", st(unix.S_IFCHR), "", "tty"},
		{"pipe:[123]", st(unix.S_IFIFO), "pipe", ""},
		{"socket:[9]", st(unix.S_IFSOCK), "socket", ""},
		{"anon_inode:[eventfd]", st(0), "eventfd", ""},
		{"anon_inode:[signalfd]", st(0), "signalfd", ""},
		{"anon_inode:[timerfd]", st(0), "timerfd", ""},
		{"anon_inode:[eventpoll]", st(0), "eventpoll", ""},
		{"anon_inode:[io_uring]", st(0), "", "io_uring"},
		{"anon_inode:inotify", st(0), "inotify", ""},
		{"anon_inode:[fanotify]", st(0), "fanotify", ""},
		{"anon_inode:[pidfd]", st(0), "pidfd", ""},
		{"net:[4026531840]", st(0), "namespace", ""},
		{"pid_for_children:[4026531836]", st(0), "", "pid_for_children:[4026531836]"},
		{"/memfd:x (deleted)", st(unix.S_IFREG), "memfd", ""},
		{"/tmp/gone (deleted)", st(unix.S_IFREG), "deleted file", ""},
		{"/tmp/gonedir (deleted)", st(unix.S_IFDIR), "", "deleted file"},
		{"/dev/sda", st(unix.S_IFBLK), "", "block device"},
	} {
		k, why := classify(c.target, c.st)
		switch {
		case c.kind != "" && (k == nil || k.name() != c.kind):
			t.Errorf("%s: kind %v (%q), want %s", c.target, k, why, c.kind)
		case c.kind == "" && (k != nil || why != c.why):
			t.Errorf("%s: kind %v, %q; want unsupported %q", c.target, k, why, c.why)
		}
	}
}
