package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/internal/lab"
)

// TestMigrateCompress measures --compress on the lab's full-speed link and
// on a 100 Mbit/s one (tc tbf on host A), with compressible memory
// (migrant's pattern), incompressible memory (noise: xorshift output) and
// memory the program filled with zeros (noise -z), each moved with
// --compress none, zstd and auto (with what auto measured) in one run; every program checks its
// memory on the destination. Figures are logged, never asserted: they say
// where compression pays. GODWIT_BENCH_MIGRATE=1 moves 256 MiB (otherwise
// 32 MiB).
func TestMigrateCompress(t *testing.T) {
	mib := 32
	if os.Getenv("GODWIT_BENCH_MIGRATE") != "" {
		mib = 256
	}
	dir := t.TempDir()
	bins := map[string]string{}
	for _, w := range []string{"migrant", "noise"} {
		bins[w] = filepath.Join(dir, w)
		if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", bins[w], "workloads/"+w+".c").CombinedOutput(); err != nil {
			t.Fatalf("gcc %s: %v\n%s", w, err, out)
		}
	}
	m := newMigLab(t)
	m.startAgent()
	for _, link := range []string{"lab link", "100mbit"} {
		if link == "100mbit" {
			tc(t, m.a, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "100mbit", "burst", "256kb", "latency", "100ms")
		}
		for _, mem := range []struct {
			name string
			argv []string
		}{
			{"pattern", []string{bins["migrant"], "-m", strconv.Itoa(mib), "-r", "64"}},
			{"random", []string{bins["noise"], "-m", strconv.Itoa(mib)}},
			{"zeros", []string{bins["noise"], "-z", "-m", strconv.Itoa(mib)}},
		} {
			for _, comp := range []string{"none", "zstd", "auto"} {
				w := startOnHost(t, m.a, mem.argv...)
				for deadline := time.Now().Add(60 * time.Second); !strings.Contains(readFile(w.log), "ready"); time.Sleep(10 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("%s not ready\n%s", mem.name, w.tail())
					}
				}
				code, res, stderr := m.send(w, "--compress", comp, "--max-rounds", "1", "--no-lazy-restore")
				if code != 0 {
					t.Fatalf("%s %s %s: exit %d: %s", link, mem.name, comp, code, stderr)
				}
				rp := m.moved(w)
				if err := syscall.Kill(rp, syscall.SIGUSR1); err != nil {
					t.Fatal(err)
				}
				for deadline := time.Now().Add(60 * time.Second); !doneGapRE.MatchString(readFile(w.log)); time.Sleep(20 * time.Millisecond) {
					if strings.Contains(readFile(w.log), "bad page") || time.Now().After(deadline) {
						t.Fatalf("%s %s %s: memory not intact on the destination\n%s", link, mem.name, comp, w.tail())
					}
				}
				r := res.Rounds[0]
				wire := r.Wire
				if wire == 0 {
					wire = r.Bytes
				}
				var later []string
				for _, x := range res.Rounds[1:] {
					later = append(later, strconv.FormatBool(x.Wire > 0))
				}
				t.Logf("%-8s %-7s --compress %-4s round 0: %4d MiB as %4d MiB on the wire in %6v: %6.0f MB/s of memory; total %6v; later rounds compressed: %s",
					link, mem.name, comp, r.Bytes>>20, wire>>20, r.Duration.Round(time.Millisecond), r.Bandwidth/1e6,
					res.Total.Round(time.Millisecond), strings.Join(later, ","))
				// Figures are not asserted, the choice and its effect are:
				// --compress zstd compresses, and zeros and a repeated
				// pattern shrink on the wire.
				if comp == "zstd" {
					if res.Compress != "zstd" {
						t.Errorf("%s %s --compress zstd: result says compress %q", link, mem.name, res.Compress)
					}
					if r.Wire == 0 {
						t.Errorf("%s %s --compress zstd: round 0 not compressed (no wire bytes)", link, mem.name)
					}
					if mem.name != "random" && r.Wire >= r.Bytes {
						t.Errorf("%s %s --compress zstd: round 0 put %d bytes on the wire for %d of memory", link, mem.name, r.Wire, r.Bytes)
					}
				}
				if a := res.Auto; a != nil {
					t.Logf("         auto: link probe %.0f MB/s, zstd %.0f MB/s at ratio %.3f: compress %v", a.Link/1e6, a.Zstd/1e6, a.Ratio, a.Compress)
				} else if comp == "auto" {
					t.Errorf("--compress auto reported no measure")
				}
			}
		}
	}
}

// tc runs tc(8) in host h's network namespace; a qdisc it adds is removed
// at cleanup.
func tc(t *testing.T, h *lab.Host, args ...string) {
	t.Helper()
	run := func(a ...string) error {
		out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(h.InitPID()), "-n", "--", "tc"}, a...)...).CombinedOutput()
		if err != nil {
			t.Logf("tc %v: %v: %s", a, err, out)
		}
		return err
	}
	if err := run(args...); err != nil {
		t.Fatal("tc failed")
	}
	if len(args) > 3 && args[0] == "qdisc" && args[1] == "add" {
		t.Cleanup(func() { _ = run("qdisc", "del", "dev", args[3], "root") })
	}
}
