package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"godwit/migrate"
)

// startMemticker starts workloads/memticker.c on this host (a session of
// its own) and waits until it has filled its memory.
func startMemticker(t *testing.T, args ...string) *workload {
	t.Helper()
	dir := t.TempDir()
	w := &workload{t: t, log: filepath.Join(dir, "log"), output: filepath.Join(dir, "output"), waited: make(chan error, 1)}
	out, err := os.Create(w.output)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	w.cmd = exec.Command(memtickerBin(t), append(args, w.log)...)
	w.cmd.Stdout, w.cmd.Stderr = out, out
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.pid = w.cmd.Process.Pid
	go func() { w.waited <- w.cmd.Wait() }()
	t.Cleanup(func() {
		killAndForget(w.pid)
		select {
		case <-w.waited:
		case <-time.After(5 * time.Second):
		}
	})
	logLine(t, w.log, regexp.MustCompile(`^ready pid=`), 0, 60*time.Second)
	return w
}

// preDumpChain runs n pre-dump rounds of pid into root/pre1..preN (each
// chained to the one before) and returns the last one's name relative to a
// sibling directory; the tracking holders are killed at test end.
func preDumpChain(t *testing.T, root string, pid, n int) string {
	t.Helper()
	var holders []string
	t.Cleanup(func() {
		for _, h := range holders {
			if b, err := os.ReadFile("/proc/" + h + "/comm"); err == nil && strings.TrimSpace(string(b)) == "godwit-track" {
				k, _ := strconv.Atoi(h)
				killAndForget(k)
			}
		}
	})
	prev := ""
	for i := 1; i <= n; i++ {
		dir := filepath.Join(root, "pre"+strconv.Itoa(i))
		args := []string{"pre-dump", "-t", strconv.Itoa(pid), "-D", dir}
		if prev != "" {
			args = append(args, "--prev-images-dir", prev)
		}
		if code, out := godwit(t, args...); code != 0 {
			t.Fatalf("pre-dump %d: exit %d: %s", i, code, out)
		}
		if m := regexp.MustCompile(`"holder_pid":(\d+)`).FindStringSubmatch(readFile(filepath.Join(dir, "godwit-track.json"))); m != nil {
			holders = append(holders, m[1])
		}
		prev = "../pre" + strconv.Itoa(i)
		time.Sleep(200 * time.Millisecond) // the program dirties pages meanwhile
	}
	return prev
}

// lazyDumpServe starts `dump --lazy-pages` with extra arguments and returns
// the command, the address it serves on, and channels for its end.
func lazyDumpServe(t *testing.T, args ...string) (cmd *exec.Cmd, addr string, dumped chan error, stdout, stderr *bytes.Buffer) {
	t.Helper()
	cmd = exec.Command(godwitBin, append([]string{"dump", "--lazy-pages", "--address", "127.0.0.1", "--port", "0", "--display-stats"}, args...)...)
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr = &bytes.Buffer{}, &bytes.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	dumped = make(chan error, 1)
	addrc := make(chan string, 1)
	// stdout is read by the test only after dumped delivered.
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "Serving lazy pages on "); ok {
				addrc <- a
			}
			stdout.WriteString(sc.Text() + "\n")
		}
		dumped <- cmd.Wait()
	}()
	t.Cleanup(func() { cmd.Process.Kill() })
	select {
	case addr = <-addrc:
	case err := <-dumped:
		t.Fatalf("dump --lazy-pages: %v: %s", err, stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatal("dump --lazy-pages did not start serving")
	}
	return cmd, addr, dumped, stdout, stderr
}

// restoreSideScript runs, in a pid namespace of its own (another host's
// view), lazy-pages --page-server against the dump and restore
// --lazy-pages; it prints "lazy-pages=RC" when the daemon ends and
// "restore=RC" when the restored program does.
const restoreSideScript = `"$1" lazy-pages -D "$2" -v4 -o lazy-pages.log --display-stats --page-server --address 127.0.0.1 --port "$3" >"$2/lazy-pages.out" 2>&1 &
lp=$!
while [ ! -S "$2/lazy-pages.socket" ]; do sleep 0.01; done
"$1" restore -D "$2" --lazy-pages -v4 -o restore.log &
rs=$!
wait $lp; echo "lazy-pages=$?"
wait $rs; echo "restore=$?"`

// TestLazyDumpOnPreDumpChain: two pre-dump rounds of a program that keeps
// rewriting its memory, then dump --lazy-pages on top of them: the pages
// written since the last round stay lazy in the frozen program, the others
// are PARENT entries. The restore side (its own pid namespace) runs
// lazy-pages --page-server, which reads the PARENT pages from the local
// parent images and the lazy ones from the dump: both levels are used, and
// the restored program finds every page as it wrote it.
func TestLazyDumpOnPreDumpChain(t *testing.T) {
	needRoot(t)
	// 1 MB/s: about 0.25 pages a tick, so the pages written between the
	// last round and the freeze are some (waited for below) but never
	// all 8192 (that would take half a minute of ticks), however slow
	// the machine.
	w := startMemticker(t, "-m", "32", "-w", "1")
	root := t.TempDir()
	prev := preDumpChain(t, root, w.pid, 2)
	// Pages written since the last round, whatever the load: the write
	// count of a check requested now must grow.
	for first := memtickerWrites(t, w); memtickerWrites(t, w) == first; {
	}
	final := filepath.Join(root, "final")
	if err := os.Mkdir(final, 0o700); err != nil {
		t.Fatal(err)
	}
	_, addr, dumped, dumpOut, dumpErr := lazyDumpServe(t, "-t", strconv.Itoa(w.pid), "-D", final,
		"--prev-images-dir", prev, "--track-mem", "-v4", "-o", "dump.log")
	// The images are CRIU's: PARENT entries for what the rounds have,
	// LAZY ones without data for the rest of the lazy memory.
	crit, err := exec.Command("crit", "show", filepath.Join(final, "pagemap-"+strconv.Itoa(w.pid)+".img")).CombinedOutput()
	if err != nil || !bytes.Contains(crit, []byte("PARENT")) || !bytes.Contains(crit, []byte("LAZY")) {
		t.Errorf("crit show pagemap: %v: want PARENT and LAZY entries:\n%s", err, crit)
	}
	_, port, _ := strings.Cut(addr, ":")
	rs := exec.Command("unshare", "-pf", "--mount-proc", "sh", "-c", restoreSideScript, "sh", godwitBin, final, port)
	var rsOut bytes.Buffer
	rs.Stdout, rs.Stderr = &rsOut, &rsOut
	if err := rs.Start(); err != nil {
		t.Fatal(err)
	}
	rsDone := make(chan error, 1)
	go func() { rsDone <- rs.Wait() }()
	t.Cleanup(func() {
		rs.Process.Kill() // pid 1 of the namespace: takes everything in it along
		select {
		case <-rsDone:
		case <-time.After(10 * time.Second):
		}
	})
	select {
	case err := <-dumped:
		if err != nil {
			t.Fatalf("dump --lazy-pages: %v: %s\n%s\n%s", err, dumpErr.String(), rsOut.String(), readFile(filepath.Join(final, "dump.log")))
		}
	case <-time.After(120 * time.Second):
		t.Fatalf("dump --lazy-pages did not finish: %s\n%s\n%s", dumpErr.String(), rsOut.String(), readFile(filepath.Join(final, "lazy-pages.log")))
	}
	w.reapKilled(t)
	lazy := statValue(t, dumpOut.String(), `Lazy memory pages: (\d+)`)
	parent := statValue(t, dumpOut.String(), `Memory pages skipped from parent: (\d+)`)
	if lazy == 0 || parent == 0 {
		t.Errorf("dump: %d lazy pages, %d in the parent images: want both\n%s", lazy, parent, dumpOut.String())
	}
	waitFor(t, "the lazy-pages daemon to end", func() bool { return strings.Contains(rsOut.String(), "lazy-pages=") })
	if !strings.Contains(rsOut.String(), "lazy-pages=0") {
		t.Fatalf("restore side: %s\n%s\n%s", rsOut.String(), readFile(filepath.Join(final, "lazy-pages.out")), readFile(filepath.Join(final, "lazy-pages.log")))
	}
	lp := readFile(filepath.Join(final, "lazy-pages.out"))
	local := statValue(t, lp, `Pages from local images: (\d+)`)
	remote := statValue(t, lp, `Pages from the page server: (\d+)`)
	if local == 0 || remote == 0 {
		t.Errorf("lazy-pages read %d pages locally and %d from the dump: want both levels used\n%s", local, remote, lp)
	}
	var restored int
	waitFor(t, "the restored program", func() bool {
		restored = nsPeer(w.pid, rs.Process.Pid)
		return restored > 0
	})
	off := logSize(w.log)
	if err := syscall.Kill(restored, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	check := memtickerCheck(t, w.log, restored, off, 60*time.Second)
	if check[1] != "ok" {
		t.Fatalf("the restored program found its memory wrong: %s", check[0])
	}
	if err := syscall.Kill(restored, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rsDone:
		if !strings.Contains(rsOut.String(), "restore=0") {
			t.Fatalf("restore side: %s\n%s", rsOut.String(), readFile(filepath.Join(final, "restore.log")))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("restored program did not end: %s", rsOut.String())
	}
	t.Logf("dump: %d lazy, %d parent pages; lazy-pages: %d local, %d remote", lazy, parent, local, remote)
}

// memtickerWrites has memticker w check its memory and returns the pages
// it had written by then.
func memtickerWrites(t *testing.T, w *workload) uint64 {
	t.Helper()
	off := logSize(w.log)
	if err := syscall.Kill(w.pid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	check := memtickerCheck(t, w.log, w.pid, off, 60*time.Second)
	if check[1] != "ok" {
		t.Fatalf("memticker: %s", check[0])
	}
	return statValue(t, check[0], `writes=(\d+)`)
}

// statValue reads one number of --display-stats output.
func statValue(t *testing.T, out, re string) uint64 {
	t.Helper()
	m := regexp.MustCompile(re).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no %q in:\n%s", re, out)
	}
	v, _ := strconv.ParseUint(m[1], 10, 64)
	return v
}

// TestMigrateHybrid moves a program that rewrites its memory faster than
// pre-copy rounds converge (and with few rounds allowed): after the
// rounds, the final dump leaves the pages written since the last round in
// the frozen source, the agent resumes the program at once with the round
// pages from its own images and pulls the rest; the source goes only when
// every page is in. The program then checks its memory on host B.
//
// With --compress zstd the rounds (TLS: relayed, QUIC: every stream), the
// final round over QUIC and the lazy pages travel compressed; with
// --streams 2 the rounds and the final round are striped.
func TestMigrateHybrid(t *testing.T) {
	for _, run := range []struct {
		tr, compress string
		streams      int
	}{{"tls", "auto", 2}, {"tls", migrate.CompressZstd, 0}, {"quic", "auto", 0}, {"quic", migrate.CompressZstd, 2}} {
		t.Run(fmt.Sprintf("%s+%s,streams=%d", run.tr, run.compress, run.streams), func(t *testing.T) {
			migrateHybrid(t, run.tr, run.compress, run.streams)
		})
	}
}

func migrateHybrid(t *testing.T, transport, compress string, streams int) {
	m := newMigLab(t)
	client := filepath.Join(m.certs, m.b.Addr(), "client")
	m.startAgent("--tls-client-cert", filepath.Join(client, "cert.pem"), "--tls-client-key", filepath.Join(client, "key.pem"))
	const mib = 64
	w := startOnHost(t, m.a, memtickerBin(t), "-m", strconv.Itoa(mib), "-w", "32")
	logLine(t, w.log, regexp.MustCompile(`^ready pid=`), 0, 60*time.Second)
	server := filepath.Join(m.certs, m.a.Addr(), "server")
	code, res, stderr := m.send(w, "--mode", "hybrid", "--max-rounds", "2", "--downtime-budget", "1ms", "--transport", transport, "--compress", compress, "--streams", strconv.Itoa(streams),
		"--tls-server-cert", filepath.Join(server, "cert.pem"), "--tls-server-key", filepath.Join(server, "key.pem"))
	if code != 0 {
		t.Fatalf("migrate send: exit %d: %s", code, stderr)
	}
	rootB := m.moved(w)
	defer killAndForget(rootB)
	if res.Mode != migrate.ModeHybrid || res.Transport != transport || res.Downtime <= 0 || res.Overrun || res.FailedPhase != "" ||
		compress == migrate.CompressZstd && res.Compress != compress {
		t.Errorf("result %+v", res)
	}
	// A compressed TLS round is one relayed stream.
	relayed := transport == "tls" && (res.Compress == migrate.CompressZstd || res.Auto != nil && res.Auto.Compress)
	if streams > 0 && !relayed && res.Streams != streams {
		t.Errorf("result %+v", res)
	}
	// Two pre-copy rounds (the first with every page), then the final
	// one, whose dirty pages stayed on the source.
	if len(res.Rounds) != 3 || res.Rounds[0].Bytes < mib<<20 {
		t.Errorf("rounds %+v: want 2 pre-copy rounds and the final one", res.Rounds)
	}
	pc := res.Postcopy
	if pc == nil || pc.Pages < mib*256 {
		t.Fatalf("postcopy %+v: want every page of the %d MiB filled after the resume", pc, mib)
	}
	if pc.Faults > 0 && pc.FaultP50 <= 0 {
		t.Errorf("postcopy %+v: faults without a latency", pc)
	}
	// The agent gone, the moved program needs nothing from it, nor from
	// the source.
	killAndForget(m.agentP)
	_ = m.agent.Wait()
	off := logSize(w.log)
	if err := syscall.Kill(rootB, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	check := memtickerCheck(t, w.log, rootB, off, 60*time.Second)
	if check[1] != "ok" {
		t.Fatalf("the migrated program found its memory wrong: %s", check[0])
	}
	t.Logf("hybrid: downtime %v, rounds %d, post-copy %d pages, %d faults (p50 %v, p99 %v) in %v",
		res.Downtime, len(res.Rounds), pc.Pages, pc.Faults, pc.FaultP50, pc.FaultP99, pc.Duration)
}
