package dumper

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"godwit/internal/images"
	"godwit/pageserver"
)

// TestLazyDumpOnPageServerChain is the final dump of `migrate send --mode
// hybrid`: a pre-dump round to a page server, pages rewritten, then
// dump --lazy-pages on top of the round with its pagemap sent to a page
// server chained to the round's. There, the rewritten pages of the lazy
// region are PE_LAZY entries without data and the others PE_PARENT; the
// dump serves the lazy ones from the frozen task, as they are in its
// memory, and finishes (kills) the task once the lazy-pages client says
// CLOSE.
func TestLazyDumpOnPageServerChain(t *testing.T) {
	needRoot(t)
	w := startRewriter(t, 256, 0)
	pid := w.p.Pid
	root := t.TempDir()
	serve := func(dir, prev string) string {
		ln, err := pageserver.Listen("127.0.0.1:0", pageserver.TransportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = pageserver.Serve(ctx, ln, pageserver.Config{ImagesDir: dir, PrevImagesDir: prev})
		}()
		t.Cleanup(func() { cancel(); <-done })
		return ln.Addr().String()
	}
	local := func(i int) string { return filepath.Join(root, fmt.Sprintf("l%d", i)) }
	remote := func(i int) string { return filepath.Join(root, fmt.Sprintf("s%d", i)) }
	t.Cleanup(func() { killHolder(t, local(1)) })
	preDump(t, PreDumpOptions{Pid: pid, ImagesDir: local(1), PageServer: &PageServer{Addr: serve(remote(1), "")}})
	w.step(t, 1) // pages k%10 == 1 of region A rewritten

	addr := serve(remote(2), "../s1")
	if err := os.Mkdir(local(2), 0o700); err != nil {
		t.Fatal(err)
	}
	o := dumpOpts(pid, local(2))
	o.PrevImagesDir, o.TrackMem = "../l1", true
	lazyAddr := make(chan string, 1)
	type result struct {
		r   *Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := DumpLazyContext(context.Background(), o, nil, LazyServe{Addr: "127.0.0.1:0", Listening: func(a string) { lazyAddr <- a },
			Pages: &PageServer{Addr: addr}})
		done <- result{r, err}
	}()
	var la string
	select {
	case la = <-lazyAddr:
	case r := <-done:
		t.Fatalf("dump --lazy-pages: %v", r.err)
	case <-time.After(60 * time.Second):
		t.Fatal("dump --lazy-pages did not start serving")
	}
	// The images stand (the page server has the pagemap) while the task
	// is frozen.
	f := pageFlags(t, remote(2), pid)
	var lazy []uint64
	for k := uint64(0); k < w.n; k++ {
		a := w.a + k*pageSize
		want := uint32(images.PageInParent)
		if k%10 == 1 {
			want = images.PageLazy
			lazy = append(lazy, a)
		}
		if got := f[a]; got != want {
			t.Fatalf("page %d: flags %#x, want %#x", k, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(local(2), images.PagemapImg(pid))); err == nil {
		t.Error("the pagemap went to the images directory, not to the page server")
	}
	c, err := pageserver.Dial(context.Background(), la, pageserver.TransportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	got, want := make([]byte, pageSize), make([]byte, pageSize)
	for _, a := range lazy {
		if _, err := c.Get(pid, a, 1, got); err != nil {
			t.Fatalf("GET %#x: %v", a, err)
		}
		if _, err := mem.ReadAt(want, int64(a)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("GET %#x: not the frozen task's page", a)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("dump --lazy-pages: %v", r.err)
		}
		if n := r.r.Stats.GetPagesLazy(); n < uint64(len(lazy)) || r.r.Stats.GetPagesSkippedParent() < w.n-uint64(len(lazy)) {
			t.Fatalf("stats: %d lazy (want at least %d), %d in the parent", n, len(lazy), r.r.Stats.GetPagesSkippedParent())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dump --lazy-pages still serving after CLOSE")
	}
	w.p.Reaped(t)
}

// lazyServeEnv runs the test binary as a dump --lazy-pages that serves
// until killed: PID,DIR,DIEWITHSERVER.
const lazyServeEnv = "GODWIT_DUMPER_TEST_LAZYSERVE"

func lazyServeChild(arg string) int {
	f := strings.Split(arg, ",")
	if len(f) != 3 {
		return 2
	}
	pid, _ := strconv.Atoi(f[0])
	_, err := DumpLazyContext(context.Background(), Options{Pid: pid, ImagesDir: f[1]}, nil, LazyServe{Addr: "127.0.0.1:0",
		DieWithServer: f[2] == "true", Listening: func(string) { fmt.Println("serving") }})
	fmt.Fprintln(os.Stderr, err)
	return 1
}

// TestLazyServeDiesWithServer: a dump --lazy-pages killed while it serves
// leaves its frozen tree running again as it was, unless DieWithServer
// (a migration past its switch-over) asked the tree to die with it.
func TestLazyServeDiesWithServer(t *testing.T) {
	for _, die := range []bool{false, true} {
		t.Run(strconv.FormatBool(die), func(t *testing.T) {
			needRoot(t)
			p := startCounter(t, false)
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), lazyServeEnv+"="+fmt.Sprintf("%d,%s,%v", p.Pid, t.TempDir(), die))
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waited := make(chan error, 1)
			serving := make(chan bool, 1)
			go func() {
				sc := bufio.NewScanner(out)
				ok := sc.Scan() && sc.Text() == "serving"
				serving <- ok
				_, _ = io.Copy(io.Discard, out)
				waited <- cmd.Wait()
			}()
			t.Cleanup(func() { cmd.Process.Kill() })
			select {
			case ok := <-serving:
				if !ok {
					t.Fatalf("the dump did not serve: %s", stderr.String())
				}
			case <-time.After(60 * time.Second):
				t.Fatal("the dump did not start serving")
			}
			if st, _ := status(t, p.Pid); st != 't' && st != 'T' {
				t.Fatalf("while serving, pid %d is in state %c", p.Pid, st)
			}
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-waited:
			case <-time.After(30 * time.Second):
				t.Fatal("the killed dump did not exit")
			}
			if die {
				p.Reaped(t)
				return
			}
			assertRunningUntraced(t, p.Pid)
		})
	}
}
