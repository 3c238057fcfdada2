package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"godwit/internal/opts"
)

// parse builds a fresh command tree and parses args for the command they
// name, without running it.
func parse(t *testing.T, args ...string) (*opts.Options, error) {
	t.Helper()
	a := &app{o: opts.New(), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	root := newRoot(a)
	args = expandVerbosity(args)
	cmd, rest, err := root.Find(args)
	if err != nil {
		return nil, err
	}
	return a.o, cmd.ParseFlags(rest)
}

// manualOptions is criu(8)'s option set, command by command (criu.8.txt and
// criu-names.md). Each entry is a command line that must parse.
var manualOptions = map[string][][]string{
	"common": {
		{"-v"}, {"-vvvv"}, {"-v0"}, {"-v4"}, {"--verbosity"}, {"--verbosity=3"},
		{"--pidfile", "p"}, {"-o", "log"}, {"--log-file", "log"}, {"--log-pid"},
		{"--display-stats"}, {"--no-display-stats"}, {"-D", "d"}, {"--images-dir", "d"},
		{"--prev-images-dir", "p"}, {"-W", "w"}, {"--work-dir", "w"}, {"--close", "9"},
		{"-L", "l"}, {"--libdir", "l"}, {"--action-script", "true"}, {"-h"}, {"--help"},
	},
	"pre-dump": {
		{"-t", "1"}, {"--tree", "1"}, {"--track-mem"}, {"--page-server", "--address", "127.0.0.1", "--port", "9"},
	},
	"dump": {
		{"-t", "1"}, {"--tree=1"}, {"-t1"}, {"-R"}, {"--leave-running"}, {"-s"}, {"--leave-stopped"},
		{"--external", "mnt[/m]:name"}, {"--external", "mnt[]:ms"}, {"--external", "mnt[]"},
		{"--external", "dev[8/1]:disk"}, {"--external", "file[25:1234]"}, {"--external", "tty[8800:12]"},
		{"--external", "unix[1234]"}, {"--freeze-cgroup", "/sys/fs/cgroup/x"},
		{"--manage-cgroups"}, {"--manage-cgroups=full"}, {"--cgroup-props", `"c1": []`},
		{"--cgroup-props-file", "f"}, {"--cgroup-dump-controller", "cpu"},
		{"--tcp-established"}, {"--skip-in-flight"}, {"--tcp-close"}, {"--evasive-devices"},
		{"--page-server", "--address", "127.0.0.1", "--port", "9"}, {"--force-irmap"},
		{"--auto-dedup"}, {"-l"}, {"--file-locks"}, {"--link-remap"}, {"--ghost-limit", "10M"}, {"--ext-unix-sk"},
		{"-j"}, {"--shell-job"}, {"--cpu-cap"}, {"--cpu-cap=fpu,ins"}, {"--cgroup-root", "cpu:/new"},
		{"--cgroup-root", "/new"}, {"--lazy-pages"}, {"--track-mem"},
		{"--network-lock", "iptables"}, {"--network-lock=nftables"}, {"--network-lock", "skip"},
	},
	"restore": {
		{"--inherit-fd", "fd[3]:tty[8800:12]"}, {"--inherit-fd", "fd[4]:pipe[1234]"},
		{"--inherit-fd", "fd[5]:socket[99]"}, {"--inherit-fd", "fd[6]:file[25:1234]"},
		{"--inherit-fd", "fd[7]:some/file"}, {"-d"}, {"--restore-detached"}, {"-s"},
		{"--leave-stopped"}, {"-S"}, {"--restore-sibling"}, {"-r", "/"}, {"--root", "/"},
		{"--external", "mnt[name]:/mnt"}, {"--external", "mnt[]"}, {"--external", "dev[disk]:/dev/sda"},
		{"--external", "veth[eth0]:veth1@br0"}, {"--external", "macvlan[mv0]:eth0"},
		{"--manage-cgroups"}, {"--manage-cgroups=none"}, {"--manage-cgroups=props"},
		{"--manage-cgroups=soft"}, {"--manage-cgroups=full"}, {"--manage-cgroups=strict"},
		{"--cgroup-root", "/r"}, {"--tcp-established"}, {"--tcp-close"}, {"--veth-pair", "eth0=veth9"},
		{"-l"}, {"--file-locks"}, {"--auto-dedup"}, {"-j"}, {"--shell-job"}, {"--cpu-cap"},
		{"--cpu-cap=all"}, {"--cpu-cap=cpu"}, {"--cpu-cap=fpu"}, {"--cpu-cap=ins"}, {"--cpu-cap=none"},
		{"--cpu-cap=^fpu"}, {"--weak-sysctls"}, {"--lazy-pages"}, {"--join-ns", "net:/run/netns/x"}, {"--join-ns=uts:1"},
		{"--network-lock", "iptables"}, {"--network-lock=nftables"}, {"--network-lock", "skip"},
	},
	"check": {
		{"--extra"}, {"--experimental"}, {"--all"}, {"--feature", "list"}, {"--feature", "uffd"},
	},
	"page-server": {
		{"--daemon"}, {"--status-fd", "3"}, {"--address", "127.0.0.1"}, {"--port", "0"}, {"--lazy-pages"},
	},
	"lazy-pages": {
		{"--page-server", "--address", "127.0.0.1", "--port", "9"},
	},
	"service":       {{"--address", "/run/godwit.sock"}, {"--daemon"}},
	"dedup":         {{"-D", "d"}},
	"cpuinfo dump":  {{"-D", "d"}},
	"cpuinfo check": {{"-D", "d"}, {"--cpu-cap=ins"}},
}

func TestManualOptionsParse(t *testing.T) {
	commands := []string{"dump", "pre-dump", "restore", "check", "page-server", "lazy-pages",
		"service", "dedup", "cpuinfo dump", "cpuinfo check"}
	for cmdName, lines := range manualOptions {
		targets := []string{cmdName}
		if cmdName == "common" {
			targets = commands
		}
		for _, target := range targets {
			for _, line := range lines {
				args := append(strings.Fields(target), line...)
				if _, err := parse(t, args...); err != nil && !strings.Contains(err.Error(), "help requested") {
					t.Errorf("godwit %s: %v", strings.Join(args, " "), err)
				}
			}
		}
	}
}

func TestOptionValues(t *testing.T) {
	cases := []struct {
		args  []string
		check func(*opts.Options) bool
	}{
		{[]string{"dump"}, func(o *opts.Options) bool { return o.Verbosity == 2 }},
		{[]string{"dump", "-v"}, func(o *opts.Options) bool { return o.Verbosity == 3 }},
		{[]string{"dump", "-vv"}, func(o *opts.Options) bool { return o.Verbosity == 4 }},
		{[]string{"dump", "-v0"}, func(o *opts.Options) bool { return o.Verbosity == 0 }},
		{[]string{"dump", "-v4"}, func(o *opts.Options) bool { return o.Verbosity == 4 }},
		{[]string{"dump", "--verbosity"}, func(o *opts.Options) bool { return o.Verbosity == 3 }},
		{[]string{"dump", "--verbosity=1"}, func(o *opts.Options) bool { return o.Verbosity == 1 }},
		{[]string{"dump", "-t42"}, func(o *opts.Options) bool { return o.Tree == 42 }},
		{[]string{"dump", "--ghost-limit", "2M"}, func(o *opts.Options) bool { return o.GhostLimit == 2<<20 }},
		{[]string{"dump", "--ghost-limit=3K"}, func(o *opts.Options) bool { return o.GhostLimit == 3<<10 }},
		{[]string{"dump", "--ghost-limit=1G"}, func(o *opts.Options) bool { return o.GhostLimit == 1<<30 }},
		{[]string{"dump"}, func(o *opts.Options) bool { return o.GhostLimit == 1<<20 }},
		{[]string{"dump", "-R", "--no-leave-running"}, func(o *opts.Options) bool { return !o.LeaveRunning }},
		{[]string{"dump", "--no-leave-running", "-R"}, func(o *opts.Options) bool { return o.LeaveRunning }},
		{[]string{"restore", "--display-stats", "--no-display-stats"}, func(o *opts.Options) bool { return !o.DisplayStats }},
		{[]string{"dump", "--cpu-cap"}, func(o *opts.Options) bool { return o.CPUCap == "all" }},
		{[]string{"restore", "--manage-cgroups"}, func(o *opts.Options) bool { return o.ManageCgroups == "soft" }},
		{[]string{"restore", "--inherit-fd", "fd[7]:pipe[99]"}, func(o *opts.Options) bool {
			return len(o.InheritFD) == 1 && o.InheritFD[0].FD == 7 && o.InheritFD[0].Resource == "pipe[99]"
		}},
		{[]string{"dump", "--external", "mnt[/a]:x", "--external", "unix[5]"}, func(o *opts.Options) bool {
			return len(o.External) == 2 && o.External[0] == opts.External{Type: "mnt", ID: "/a", Value: "x"} &&
				o.External[1] == opts.External{Type: "unix", ID: "5"}
		}},
		{[]string{"dump", "--network-lock", "iptables"}, func(o *opts.Options) bool { return o.NetworkLock == "iptables" }},
		{[]string{"restore", "--network-lock=skip"}, func(o *opts.Options) bool { return o.NetworkLock == "skip" }},
		{[]string{"agent", "--network-lock", "iptables"}, func(o *opts.Options) bool { return o.NetworkLock == "iptables" }},
		{[]string{"check", "--close", "7", "--close", "8"}, func(o *opts.Options) bool { return slices.Equal(o.Close, []int{7, 8}) }},
	}
	for _, c := range cases {
		o, err := parse(t, c.args...)
		if err != nil {
			t.Errorf("%v: %v", c.args, err)
			continue
		}
		if !c.check(o) {
			t.Errorf("%v: wrong value: %+v", c.args, *o)
		}
	}
}

func TestBadOptionsRejected(t *testing.T) {
	bad := [][]string{
		{"dump", "--ghost-limit", "10X"},
		{"dump", "--ghost-limit", "M"},
		{"dump", "--external", "nonsense"},
		{"dump", "--external", "disk[1]:x"},
		{"dump", "--external", "file[abc]"},
		{"dump", "-t", "notapid"},
		{"restore", "--inherit-fd", "3:pipe[1]"},
		{"restore", "--inherit-fd", "fd[x]:pipe[1]"},
		{"restore", "--inherit-fd", "fd[3]:pipe[abc]"},
		{"restore", "--manage-cgroups=sometimes"},
		{"restore", "--cpu-cap=avx"},
		{"restore", "--veth-pair", "novalue"},
		{"dump", "--no-such-option"},
		{"check", "-v", "--verbosity=x"},
		{"dump", "--cgroup-root", "relative"},
		{"dump", "--network-lock", "nft"},
		{"restore", "--network-lock="},
		{"agent", "--network-lock", "nft"},
	}
	for _, args := range bad {
		if _, err := parse(t, args...); err == nil {
			t.Errorf("godwit %s: accepted", strings.Join(args, " "))
		}
	}
}

// runGodwit runs a command line through the real entry point.
func runGodwit(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestErrorsAreOneLineWithHint(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"dump", "--bogus"}, "godwit: unknown flag: --bogus"},
		{[]string{"frobnicate"}, `godwit: unknown command "frobnicate"`},
		{[]string{"dump", "-t", "1", "-R", "-s"}, "godwit: --leave-running and --leave-stopped are mutually exclusive"},
		{[]string{"page-server", "--daemon", "--status-fd", "3"}, "godwit: --daemon and --status-fd are mutually exclusive"},
		{[]string{"check", "--all", "--feature", "uffd"}, "godwit: --feature checks one feature"},
		{[]string{"dump"}, "godwit: dump needs a process: -t PID"},
		{[]string{"dump", "-t", "1", "--page-server", "--address", "127.0.0.1"}, "godwit: --page-server needs --port"},
		{[]string{"swrk"}, "godwit: swrk takes one argument"},
	}
	for _, c := range cases {
		code, _, stderr := runGodwit(c.args...)
		lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
		if code == 0 || !strings.HasPrefix(lines[0], c.want) {
			t.Errorf("godwit %v: exit %d, stderr %q; want non-zero and %q", c.args, code, stderr, c.want)
			continue
		}
		if len(lines) != 2 || !strings.HasPrefix(lines[1], "Run 'godwit") {
			t.Errorf("godwit %v: want one error line and a usage hint, got %q", c.args, stderr)
		}
	}
}

func TestNotYetSupportedFailsLoudly(t *testing.T) {
	for _, args := range [][]string{
		{"dump", "-t", "1", "--tcp-close"},
		{"pre-dump", "-t", "1", "--tcp-established"},
		{"check", "-L", "/plugins"},
		{"restore", "--veth-pair", "a=b"},
	} {
		flag := ""
		for _, a := range args {
			if strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "-t") {
				flag = a
				break
			}
		}
		code, _, stderr := runGodwit(args...)
		if code == 0 || !strings.Contains(stderr, "is not supported yet") {
			t.Errorf("godwit %v (%s): exit %d, stderr %q; want a loud refusal", args, flag, code, stderr)
		}
	}
	code, _, stderr := runGodwit("exec", "-t", "1", "getpid")
	if code == 0 || !strings.Contains(stderr, "deprecated") {
		t.Errorf("exec: exit %d, stderr %q", code, stderr)
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"-V"}, {"--version"}, {"version"}, {"dump", "-V"}, {"check", "--version"}} {
		code, out, _ := runGodwit(args...)
		if code != 0 || !strings.HasPrefix(out, "Version: ") {
			t.Errorf("godwit %v: exit %d, %q", args, code, out)
		}
	}
}

// sharedDir finds shared/ beside the repository: beside this checkout, or
// beside the main checkout when this one is a git worktree.
func sharedDir() string {
	dirs := []string{filepath.Join("..", "..", "..", "shared")}
	if out, err := exec.Command("git", "rev-parse", "--path-format=absolute", "--git-common-dir").Output(); err == nil {
		dirs = append(dirs, filepath.Join(filepath.Dir(filepath.Dir(strings.TrimSpace(string(out)))), "shared"))
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "criu.8.txt")); err == nil {
			return d
		}
	}
	return dirs[0]
}

// TestEveryManualOptionRegistered reads criu(8) itself (shared/criu.8.txt,
// beside the repository) and fails if any option it names is missing.
func TestEveryManualOptionRegistered(t *testing.T) {
	shared := sharedDir()
	manual, err := os.ReadFile(filepath.Join(shared, "criu.8.txt"))
	if err != nil {
		// As root (the test environment scripts/setup prepares) the manual
		// must be there; elsewhere it may not be checked out.
		if os.Geteuid() == 0 {
			t.Fatalf("criu(8) text not found beside the repository: %v", err)
		}
		t.Skipf("not root, and criu(8) text not found beside the repository: %v", err)
	}
	names, err := os.ReadFile(filepath.Join(shared, "criu-names.md"))
	if err != nil {
		t.Fatalf("criu-names.md beside criu.8.txt: %v", err)
	}
	text := string(manual) + string(names)

	registered := map[string]bool{}
	a := &app{o: opts.New(), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.InitDefaultHelpFlag()
		c.LocalFlags().VisitAll(func(f *pflag.Flag) { registered[f.Name] = true; registered[f.Shorthand] = true })
		c.InheritedFlags().VisitAll(func(f *pflag.Flag) { registered[f.Name] = true; registered[f.Shorthand] = true })
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	root := newRoot(a)
	root.Flags().VisitAll(func(f *pflag.Flag) { registered[f.Name] = true; registered[f.Shorthand] = true })
	walk(root)

	long := regexp.MustCompile(`(?:^|[\s(,` + "`" + `])--([a-z][a-z0-9-]+)`)
	notOptions := map[string]bool{"no": true} // "--no- to negate"
	for _, m := range long.FindAllStringSubmatch(text, -1) {
		name := m[1]
		if notOptions[name] || strings.HasSuffix(name, "-") {
			continue
		}
		if !registered[name] {
			t.Errorf("criu(8) option --%s is not accepted by any godwit command", name)
		}
	}
	short := regexp.MustCompile(`(?m)^\s+-([a-zA-Z])[, \[]`)
	for _, m := range short.FindAllStringSubmatch(string(manual), -1) {
		if !registered[m[1]] {
			t.Errorf("criu(8) option -%s is not accepted by any godwit command", m[1])
		}
	}
	for _, c := range []string{"dump", "pre-dump", "restore", "check", "page-server", "lazy-pages",
		"service", "swrk", "dedup", "cpuinfo", "exec"} {
		if cmd, _, err := root.Find([]string{c}); err != nil || cmd == root {
			t.Errorf("criu(8) command %s is missing", c)
		}
	}
}
