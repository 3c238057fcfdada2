package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLazyRestoreCLI: godwit lazy-pages serves a restore --lazy-pages of
// the counter, which then passes its own checks; the daemon exits 0 once
// every page is in.
func TestLazyRestoreCLI(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-m", "32", "-t", "2")
	dir := w.dump(t)
	w.reapKilled(t)
	lp := exec.Command(godwitBin, "lazy-pages", "-D", dir, "-v4", "-o", "lazy-pages.log", "--display-stats")
	var out bytes.Buffer
	lp.Stdout, lp.Stderr = &out, &out
	if err := lp.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- lp.Wait() }()
	t.Cleanup(func() {
		lp.Process.Kill()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	})
	sock := filepath.Join(dir, "lazy-pages.socket")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lazy-pages not listening: %s", out.String())
		}
	}
	r := restore(t, w, dir, "--lazy-pages")
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Fatalf("lazy-pages: %v: %s\n%s", err, out.String(), readFile(filepath.Join(dir, "lazy-pages.log")))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("lazy-pages did not finish: %s", out.String())
	}
	if !bytes.Contains(out.Bytes(), []byte("Lazy tasks: 1")) {
		t.Fatalf("lazy-pages --display-stats: %q", out.String())
	}
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored counter exited %d\n%s", code, w.tail())
	}
}

// TestLazyDumpCLI: dump --lazy-pages keeps the counter frozen (its lazy
// pages unread) and serves those pages from its memory over TLS;
// lazy-pages --page-server fetches them for restore --lazy-pages; both
// exit 0 once every page is in, and the dump then kills the original.
// The original keeps its pid until then, so the restore side runs in a
// pid namespace of its own (as on another host).
func TestLazyDumpCLI(t *testing.T) {
	needRoot(t)
	certs := t.TempDir()
	if code, out := godwit(t, "certs", certs, "127.0.0.1"); code != 0 {
		t.Fatalf("certs: %s", out)
	}
	tlsArgs := func(role string) []string {
		host := filepath.Join(certs, "127.0.0.1", role)
		return []string{"--tls", "--tls-cacert", filepath.Join(certs, "cacert.pem"),
			"--tls-cert", filepath.Join(host, "cert.pem"), "--tls-key", filepath.Join(host, "key.pem")}
	}
	w := startC(t, false, "-m", "32", "-t", "2")
	dir := t.TempDir()
	dump := exec.Command(godwitBin, append([]string{"dump", "-t", strconv.Itoa(w.pid), "-D", dir, "--lazy-pages",
		"--address", "127.0.0.1", "--port", "0", "--display-stats"}, tlsArgs("server")...)...)
	stdout, err := dump.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var dumpErr, dumpOut bytes.Buffer
	dump.Stderr = &dumpErr
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	dumped := make(chan error, 1)
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "Serving lazy pages on "); ok {
				addr <- a
			}
			dumpOut.WriteString(sc.Text() + "\n")
		}
		dumped <- dump.Wait()
	}()
	t.Cleanup(func() { dump.Process.Kill() })
	var a string
	select {
	case a = <-addr:
	case err := <-dumped:
		t.Fatalf("dump --lazy-pages: %v: %s", err, dumpErr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("dump --lazy-pages did not start serving")
	}
	// Serving: the original is neither resumed nor killed.
	ticks := len(w.ticks())
	time.Sleep(100 * time.Millisecond)
	if st, tracer := procState(t, w.pid); (st != "t" && st != "T") || tracer == 0 || len(w.ticks()) != ticks {
		t.Fatalf("while serving, pid %d is %q traced by %d, ticks %d -> %d: want it frozen", w.pid, st, tracer, ticks, len(w.ticks()))
	}
	_, port, _ := net.SplitHostPort(a)
	script := `"$1" lazy-pages -D "$2" -v4 -o lazy-pages.log --page-server --address 127.0.0.1 --port "$3" --tls --tls-cacert "$4" --tls-cert "$5" --tls-key "$6" &
lp=$!
while [ ! -S "$2/lazy-pages.socket" ]; do sleep 0.01; done
"$1" restore -D "$2" --lazy-pages -v4 -o restore.log; rc=$?
wait $lp; echo "restore=$rc lazy-pages=$?"`
	ca := tlsArgs("client")
	rs := exec.Command("unshare", "-pf", "--mount-proc", "sh", "-c", script, "sh", godwitBin, dir, port, ca[2], ca[4], ca[6])
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
			t.Fatalf("dump --lazy-pages: %v: %s\n%s", err, dumpErr.String(), rsOut.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("dump --lazy-pages did not finish: %s\n%s\n%s", dumpErr.String(), rsOut.String(), readFile(filepath.Join(dir, "lazy-pages.log")))
	}
	if !strings.Contains(dumpOut.String(), "Lazy memory pages: ") || strings.Contains(dumpOut.String(), "Lazy memory pages: 0 ") {
		t.Errorf("dump --display-stats: no lazy pages:\n%s", dumpOut.String())
	}
	w.reapKilled(t)
	// The restored counter runs in the namespace: find it by its pid
	// there, and ask it to check itself.
	var restored int
	waitFor(t, "the restored counter", func() bool {
		restored = nsPeer(w.pid, rs.Process.Pid)
		return restored > 0
	})
	n := len(w.ticks())
	waitFor(t, "the restored counter to tick", func() bool { return len(w.ticks()) > n })
	if err := syscall.Kill(restored, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-rsDone:
		rsDone <- err
		if err != nil || !strings.Contains(rsOut.String(), "restore=0 lazy-pages=0") {
			t.Fatalf("restore side: %v: %s\n%s\n%s", err, rsOut.String(), readFile(filepath.Join(dir, "restore.log")), w.tail())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("restore side did not finish: %s", rsOut.String())
	}
	if !strings.Contains(readFile(w.log), "done") {
		t.Fatalf("the restored counter did not pass its checks\n%s", w.tail())
	}
}

// nsPeer finds the process whose pid is inner in the pid namespace that
// process unshare made for its children (0: none).
func nsPeer(inner, unshare int) int {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid_for_children", unshare))
	if err != nil {
		return 0
	}
	re := regexp.MustCompile(`(?m)^NSpid:\s+(\d+)\s+(\d+)$`)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		if m := re.FindSubmatch(b); m == nil || string(m[2]) != strconv.Itoa(inner) {
			continue
		}
		if own, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", p)); own == ns {
			return p
		}
	}
	return 0
}

// TestLazyTreeRestore: every live task of a tree (workloads/tree.c:
// groups, sessions, zombies, a stopped task) is restored lazily by one
// lazy-pages daemon, which exits once all their pages are in.
func TestLazyTreeRestore(t *testing.T) {
	needRoot(t)
	w := startTree(t, cWorkload(t, "tree"))
	before := subtree(t, w.pid)
	t.Cleanup(func() {
		for p := range before {
			killAndForget(p)
		}
	})
	dir := w.dump(t)
	w.reapKilled(t)
	for p := range before {
		waitFor(t, fmt.Sprintf("pid %d to go", p), func() bool { return !pidExists(p) })
	}
	lp := exec.Command(godwitBin, "lazy-pages", "-D", dir, "-v4", "-o", "lazy-pages.log")
	var out bytes.Buffer
	lp.Stdout, lp.Stderr = &out, &out
	if err := lp.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- lp.Wait() }()
	t.Cleanup(func() { lp.Process.Kill() })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "lazy-pages.socket")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lazy-pages not listening: %s", out.String())
		}
	}
	r := restore(t, w, dir, "--lazy-pages")
	if after := subtree(t, w.pid); len(after) != len(before) {
		t.Errorf("restored %d tasks, want %d", len(after), len(before))
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("lazy-pages: %v: %s\n%s", err, out.String(), readFile(filepath.Join(dir, "lazy-pages.log")))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("lazy-pages did not finish: %s\n%s", out.String(), readFile(filepath.Join(dir, "lazy-pages.log")))
	}
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored root exited %d\n%s", code, w.tail())
	}
	if !strings.Contains(readFile(w.log), "zombies ok") {
		t.Fatalf("zombie statuses wrong after a lazy restore\n%s", w.tail())
	}
}

// TestLazyChainRestore: pre-dump rounds, a final dump on top of them, then
// restore --lazy-pages: the daemon serves the pages through the parent
// images, and the counter's own check of every page passes.
func TestLazyChainRestore(t *testing.T) {
	needRoot(t)
	w := startC(t, false, "-m", "32", "-t", "2")
	root := t.TempDir()
	pid := strconv.Itoa(w.pid)
	var holders []string
	t.Cleanup(func() {
		for _, h := range holders {
			if b, err := os.ReadFile("/proc/" + h + "/comm"); err == nil && strings.TrimSpace(string(b)) == "godwit-track" {
				n, _ := strconv.Atoi(h)
				killAndForget(n)
			}
		}
	})
	prev := ""
	for i := 1; i <= 2; i++ {
		dir := filepath.Join(root, "pre"+strconv.Itoa(i))
		args := []string{"pre-dump", "-t", pid, "-D", dir}
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
		w.waitTicks(3)
	}
	dir := filepath.Join(root, "final")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if code, out := godwit(t, "dump", "-t", pid, "-D", dir, "--prev-images-dir", prev, "--track-mem", "-v4", "-o", "dump.log"); code != 0 {
		t.Fatalf("dump: exit %d: %s\n%s", code, out, readFile(filepath.Join(dir, "dump.log")))
	}
	w.reapKilled(t)
	lp := exec.Command(godwitBin, "lazy-pages", "-D", dir, "-v4", "-o", "lazy-pages.log", "--display-stats")
	var out bytes.Buffer
	lp.Stdout, lp.Stderr = &out, &out
	if err := lp.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- lp.Wait() }()
	t.Cleanup(func() {
		lp.Process.Kill()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "lazy-pages.socket")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lazy-pages not listening: %s", out.String())
		}
	}
	r := restore(t, w, dir, "--lazy-pages")
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Fatalf("lazy-pages: %v: %s\n%s", err, out.String(), readFile(filepath.Join(dir, "lazy-pages.log")))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("lazy-pages did not finish: %s", out.String())
	}
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restored counter exited %d\n%s", code, w.tail())
	}
}
