package kerndat

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"godwit/internal/procfs"
	"godwit/uffd"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel feature probes need root (ptrace of other processes, TCP_REPAIR, namespaces, cgroups)")
	}
}

func TestRegistry(t *testing.T) {
	seen := map[string]bool{}
	for _, f := range All() {
		if f.Name == "" || f.Name == "list" || strings.ContainsAny(f.Name, " \t\n") {
			t.Errorf("bad feature name %q", f.Name)
		}
		if seen[f.Name] {
			t.Errorf("duplicate feature %q", f.Name)
		}
		seen[f.Name] = true
		if f.Category < Required || f.Category > Experimental {
			t.Errorf("%s: category %d", f.Name, f.Category)
		}
		if f.probe == nil || f.Doc == "" {
			t.Errorf("%s: no probe or no doc", f.Name)
		}
	}
	// The names CRIU's `criu check --feature` knows and godwit probes, and
	// godwit's own, must all be there with the categories the brief asks.
	want := map[string]Category{
		"mem_dirty_track": Extra, "uffd": Extra, "uffd-noncoop": Extra, "lazy_pages": Extra,
		"soft_dirty": Extra, "clone3_set_tid": Required, "pidfd_getfd": Required,
		"ptrace_seize": Required, "ptrace_xstate": Required, "tcp_repair": Required,
		"map_files": Required, "sock_diag_unix": Required, "sock_diag_inet": Required,
		"mnt_id": Extra, "aio_remap": Extra, "timerfd": Extra, "tun": Extra, "userns": Extra,
		"fdinfo_lock": Extra, "seccomp_suspend": Extra, "seccomp_filters": Extra,
		"cgroupns": Extra, "autofs": Experimental, "tcp_half_closed": Extra,
		"compat_cr": Experimental, "can_map_vdso": Extra, "sk_ns": Extra, "sk_unix_file": Extra,
		"net_diag_raw": Extra, "kcmp_epoll": Extra, "timens": Extra, "pidfd_store": Extra,
		"ns_pid": Extra, "get_rseq_conf": Extra, "tun_ns": Extra,
	}
	for n, c := range want {
		f, ok := Lookup(n)
		if !ok {
			t.Errorf("feature %s missing", n)
			continue
		}
		if f.Category != c {
			t.Errorf("%s: category %v, want %v", n, f.Category, c)
		}
	}
	if !slices.Equal(Names(), func() []string {
		var n []string
		for _, f := range All() {
			n = append(n, f.Name)
		}
		return n
	}()) {
		t.Error("Names and All disagree")
	}
}

func run(t *testing.T, o Options) (string, int, error) {
	t.Helper()
	var b bytes.Buffer
	code, err := Run(&b, o)
	return b.String(), code, err
}

func TestRunDefault(t *testing.T) {
	needRoot(t)
	var got []string
	out, code, err := run(t, Options{OnResult: func(r Result) { got = append(got, r.Feature.Name) }})
	if err != nil || code != 0 || out != "Looks good.\n" {
		t.Fatalf("default check: code %d err %v output:\n%s", code, err, out)
	}
	var want []string
	for _, f := range All() {
		if f.Category == Required {
			want = append(want, f.Name)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("default check probed %v, want the category 1 features %v", got, want)
	}
}

// checkMaybe asserts a report whose only failures are the given warnings.
func checkMaybe(t *testing.T, out string, code int, err error, warned ...string) {
	t.Helper()
	if err != nil || code != 1 {
		t.Fatalf("code %d err %v, want 1 nil", code, err)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	verdict := strings.Split(VerdictMaybe, "\n")
	if len(lines) != len(warned)+len(verdict) {
		t.Fatalf("output:\n%s\nwant %d warnings then the verdict", out, len(warned))
	}
	for i, w := range warned {
		if !strings.HasPrefix(lines[i], "Warn  (kerndat): "+w+": ") {
			t.Errorf("line %d = %q, want a warning for %s", i, lines[i], w)
		}
	}
	if !slices.Equal(lines[len(warned):], verdict) {
		t.Errorf("verdict lines %q", lines[len(warned):])
	}
}

func TestRunExtra(t *testing.T) {
	needRoot(t)
	out, code, err := run(t, Options{Extra: true})
	checkMaybe(t, out, code, err, expectedWarnings(t, Selected(Options{Extra: true}))...)
}

func TestRunExperimental(t *testing.T) {
	needRoot(t)
	out, code, err := run(t, Options{Experimental: true})
	checkMaybe(t, out, code, err, expectedWarnings(t, Selected(Options{Experimental: true}))...)
}

func TestRunAll(t *testing.T) {
	needRoot(t)
	n := 0
	out, code, err := run(t, Options{All: true, OnResult: func(Result) { n++ }})
	checkMaybe(t, out, code, err, expectedWarnings(t, All())...)
	if n != len(All()) {
		t.Errorf("--all probed %d features, want %d", n, len(All()))
	}
}

func TestRunFeatureList(t *testing.T) {
	out, code, err := run(t, Options{Feature: "list"})
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	if got := strings.Fields(out); !slices.Equal(got, Names()) {
		t.Fatalf("list printed %v, want %v", got, Names())
	}
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if len(l) > 80 {
			t.Errorf("line longer than 80 columns: %q", l)
		}
	}
}

func TestRunFeature(t *testing.T) {
	needRoot(t)
	supported := []string{"tcp_repair", "clone3_set_tid"}
	if uffd.Probe().DirtyTrack() == nil {
		supported = append(supported, "mem_dirty_track") // pre-dump is built
	}
	for _, n := range supported {
		out, code, err := run(t, Options{Feature: n})
		if err != nil || code != 0 || out != n+" is supported\n" {
			t.Errorf("--feature %s: code %d err %v output %q", n, code, err, out)
		}
	}
	// Features of commands godwit has not built are not supported, and
	// the text says whether the kernel has them.
	kernel := map[string]error{
		"soft_dirty": probeSoftDirty(),
	}
	for n, kerr := range kernel {
		if n == "soft_dirty" && kerr == nil {
			continue // pre-dump is built: supported where the kernel has it
		}
		out, code, err := run(t, Options{Feature: n})
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if err != nil || code != 1 || len(lines) != 2 || lines[1] != n+" is not supported" ||
			!strings.HasPrefix(lines[0], "Warn  (kerndat): "+n+": ") {
			t.Errorf("--feature %s: code %d err %v output:\n%s", n, code, err, out)
			continue
		}
		if notBuilt := strings.Contains(lines[0], "kernel supports it, but godwit's"); notBuilt != (kerr == nil) {
			t.Errorf("--feature %s says %q; kernel probe: %v", n, lines[0], kerr)
		}
	}
}

func TestRunUnknownFeature(t *testing.T) {
	out, code, err := run(t, Options{Feature: "no_such_thing"})
	var ue *UnknownFeatureError
	if code != 1 || !errors.As(err, &ue) || ue.Name != "no_such_thing" {
		t.Fatalf("code %d err %v", code, err)
	}
	if out != "" {
		t.Errorf("unknown feature printed %q", out)
	}
	for _, n := range Names() {
		if !strings.Contains(err.Error(), n) {
			t.Errorf("error does not list %s: %v", n, err)
		}
	}
	if _, err := Probe("no_such_thing"); !errors.As(err, &ue) {
		t.Errorf("Probe of an unknown name: %v", err)
	}
}

// TestRunBad swaps in a registry with a failing category 1 feature.
func TestRunBad(t *testing.T) {
	saved := registry
	t.Cleanup(func() { registry = saved })
	registry = []Feature{
		{"good", Required, "works", func() error { return nil }},
		{"broken", Required, "fails", func() error { return errors.New("it broke\nbadly") }},
		{"extra_broken", Extra, "fails", func() error { return errors.New("also") }},
		{"panics", Experimental, "panics", func() error { panic("boom") }},
	}
	out, code, err := run(t, Options{})
	if err != nil || code != 1 || out != "Error (kerndat): broken: it broke badly\n"+VerdictBad+"\n" {
		t.Fatalf("code %d err %v output:\n%s", code, err, out)
	}
	out, code, _ = run(t, Options{All: true})
	want := "Error (kerndat): broken: it broke badly\n" +
		"Warn  (kerndat): extra_broken: also\n" +
		"Warn  (kerndat): panics: probe panicked: boom\n" + VerdictBad + "\n"
	if code != 1 || out != want {
		t.Fatalf("code %d output:\n%s\nwant:\n%s", code, out, want)
	}
	out, code, _ = run(t, Options{Feature: "broken"})
	if code != 1 || out != "Error (kerndat): broken: it broke badly\nbroken is not supported\n" {
		t.Fatalf("--feature broken: code %d output %q", code, out)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestRunWriteError(t *testing.T) {
	code, err := Run(failWriter{}, Options{Feature: "list"})
	if code != 1 || err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("code %d err %v", code, err)
	}
}

// procState is what a probe could leave behind in this process.
type procState struct {
	children []string
	fds      []string
	mounts   string
	cgroups  []string
	tmp      []string
}

func snapshot(t *testing.T) procState {
	t.Helper()
	var s procState
	me := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		st, err := procfs.ParseStat(b)
		if err == nil && st.Ppid == me {
			s.children = append(s.children, fmt.Sprintf("%d (%s) %c", st.Pid, st.Comm, st.State))
		}
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range fds {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		s.fds = append(s.fds, e.Name()+" -> "+l)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	s.mounts = string(mi)
	for _, v1 := range []bool{false, true} {
		if root, err := cgroupMount(v1, "freezer"); err == nil {
			m, _ := filepath.Glob(filepath.Join(root, "godwit-check-*"))
			s.cgroups = append(s.cgroups, m...)
		}
	}
	s.tmp, _ = filepath.Glob(filepath.Join(os.TempDir(), "godwit-check-*"))
	return s
}

// TestRunLeavesNothing: after a full check no child process of ours
// remains (running, stopped, traced or zombie), no descriptor stays open,
// nothing is mounted, no probe cgroup or temporary directory is left.
func TestRunLeavesNothing(t *testing.T) {
	needRoot(t)
	// Warm up once: the Go runtime opens some descriptors lazily.
	if _, err := Run(&bytes.Buffer{}, Options{All: true}); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t)
	if _, err := Run(&bytes.Buffer{}, Options{All: true}); err != nil {
		t.Fatal(err)
	}
	after := snapshot(t)
	if len(after.children) != 0 {
		t.Errorf("children left behind: %q", after.children)
	}
	if !slices.Equal(before.fds, after.fds) {
		t.Errorf("descriptors changed:\nbefore %q\nafter  %q", before.fds, after.fds)
	}
	if before.mounts != after.mounts {
		t.Errorf("mounts changed:\nbefore:\n%s\nafter:\n%s", before.mounts, after.mounts)
	}
	if len(after.cgroups) != 0 {
		t.Errorf("probe cgroups left behind: %q", after.cgroups)
	}
	if len(after.tmp) != 0 {
		t.Errorf("temporary directories left behind: %q", after.tmp)
	}
}
