package migrate

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func sampleResult() Result {
	return Result{
		ID: "m-1", PID: 4242, Tasks: 3, Source: "10.0.0.1", Destination: "10.0.0.2:7741",
		Mode: ModeHybrid, Transport: "quic", Started: time.Date(2026, 11, 29, 5, 0, 0, 0, time.UTC),
		Total: 2 * time.Second, Downtime: 31 * time.Millisecond,
		Rounds: []Round{
			{N: 0, Pages: 1000, Bytes: 4096000, Duration: time.Second, DirtyRate: 1 << 20, Bandwidth: 4096000},
			{N: 1, Pages: 10, Bytes: 40960, Duration: 10 * time.Millisecond, Frozen: 10 * time.Millisecond},
		},
		Postcopy: &Postcopy{Pages: 5, Faults: 4, FaultP50: 50 * time.Microsecond, FaultP99: time.Millisecond, Duration: 20 * time.Millisecond},
		Overrun:  true,
	}
}

func TestProgressJSON(t *testing.T) {
	var buf bytes.Buffer
	p := NewProgress(&buf, io.Discard, true)
	p.Phase(PhaseCheck)
	p.Round(Round{N: 0, Bytes: 1})
	if buf.Len() != 0 {
		t.Fatalf("--json wrote before the end: %q", buf.String())
	}
	want := sampleResult()
	p.Done(want)
	p.Done(want) // once only
	text := buf.String()
	dec := json.NewDecoder(&buf)
	var got Result
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("decode %q: %v", buf.String(), err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
	}
	if err := dec.Decode(&got); !errors.Is(err, io.EOF) {
		t.Errorf("more than one object: %v", err)
	}
	for _, k := range []string{`"downtime_ns": 31000000`, `"total_ns": 2000000000`, `"rounds": [`, `"mode": "hybrid"`, `"transport": "quic"`} {
		if !strings.Contains(text, k) {
			t.Errorf("JSON lacks %s", k)
		}
	}
}

// Not a terminal: nothing on stdout, not even the summary; a line per round
// on stderr.
func TestProgressNotTerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var log bytes.Buffer
	p := NewProgress(f, &log, false)
	if _, ok := p.(*logProgress); !ok {
		t.Fatalf("a regular file got %T", p)
	}
	p.Phase(PhasePrecopy)
	p.Round(Round{N: 0, Pages: 1, Bytes: 4096, Duration: 2 * time.Millisecond, Bandwidth: 2 << 20})
	p.Done(sampleResult())
	if st, err := f.Stat(); err != nil || st.Size() != 0 {
		t.Errorf("wrote %d bytes to a non-terminal (%v)", st.Size(), err)
	}
	if got, want := log.String(), "round 0: 1 pages in 2ms (2.0 MiB/s, dirty 0 B/s)\n"; got != want {
		t.Errorf("log %q, want %q", got, want)
	}
	if _, ok := NewProgress(&bytes.Buffer{}, io.Discard, false).(*logProgress); !ok {
		t.Error("a buffer is not a terminal")
	}
}

// openPTY returns the master and the slave of a new pseudo-terminal.
func openPTY(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	master := os.NewFile(uintptr(m), "ptmx")
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("TIOCSPTLCK: %v", err)
	}
	n, err := unix.IoctlGetUint32(m, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("TIOCGPTN: %v", err)
	}
	slave, err := os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close() })
	return master, slave
}

func TestProgressTerminal(t *testing.T) {
	master, slave := openPTY(t)
	out := make(chan string, 1)
	go func() {
		var all []byte
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			all = append(all, buf[:n]...)
			if err != nil || bytes.Contains(all, []byte("migrated pid 4242")) && bytes.HasSuffix(all, []byte("\n")) {
				out <- string(all)
				return
			}
		}
	}()
	p := NewProgress(slave, io.Discard, false)
	if _, ok := p.(*barProgress); !ok {
		t.Fatalf("a terminal got %T", p)
	}
	p.Phase(PhasePrecopy)
	p.Round(Round{N: 0, Bytes: 64 << 20, Duration: time.Second, DirtyRate: 8 << 20, Bandwidth: 64 << 20})
	p.Round(Round{N: 1, Bytes: 8 << 20, Duration: 125 * time.Millisecond, DirtyRate: 8 << 20, Bandwidth: 64 << 20})
	p.Phase(PhaseFreeze)
	p.Done(sampleResult())
	p.Round(Round{N: 9}) // after Done: ignored
	var got string
	select {
	case got = <-out:
	case <-time.After(10 * time.Second):
		slave.Close()
		master.Close()
		t.Fatalf("no summary on the terminal")
	}
	for _, want := range []string{"precopy · round 1 · 72.0 MiB sent · 64.0 MiB/s · dirty 8.0 MiB/s · est. last delta 15.6ms",
		"freeze · round 1 · 72.0 MiB sent", "migrated pid 4242 to 10.0.0.2:7741 in 2s: downtime 31ms, 2 rounds, 3.9 MiB sent"} {
		if !strings.Contains(got, want) {
			t.Errorf("terminal output lacks %q:\n%q", want, got)
		}
	}
	if strings.Contains(got, "round 9") {
		t.Errorf("a round after Done was drawn")
	}
}

// A failure is the command's error (stderr): the terminal line is cleared
// and nothing else is printed.
func TestProgressTerminalFailure(t *testing.T) {
	master, slave := openPTY(t)
	p := NewProgress(slave, io.Discard, false)
	p.Phase(PhaseCheck)
	r := sampleResult()
	r.FailedPhase, r.Error = PhaseCheck, "pid 4242 in use on the destination"
	p.Done(r)
	slave.Close()
	// The master reads what was written, then EIO once the slave is closed.
	var all []byte
	buf := make([]byte, 4096)
	for {
		n, err := master.Read(buf)
		all = append(all, buf[:n]...)
		if err != nil {
			break
		}
	}
	if bytes.Contains(all, []byte("failed")) || bytes.Contains(all, []byte("migrated")) {
		t.Errorf("a failed migration printed a summary: %q", all)
	}
	if !bytes.Contains(all, []byte("check")) {
		t.Errorf("the phase was never drawn: %q", all)
	}
}

func TestEstimateDelta(t *testing.T) {
	// 8 MiB/s dirtied for 0.5 s is 4 MiB; at 64 MiB/s that is 62.5 ms.
	d, ok := estimateDelta(Round{Duration: 500 * time.Millisecond, DirtyRate: 8 << 20, Bandwidth: 64 << 20})
	if !ok || d != 62500*time.Microsecond {
		t.Errorf("estimate %v %v, want 62.5ms", d, ok)
	}
	if _, ok := estimateDelta(Round{Duration: time.Second, DirtyRate: 1}); ok {
		t.Error("an estimate without bandwidth")
	}
}

func TestSummary(t *testing.T) {
	r := sampleResult()
	got := Summary(r)
	want := "migrated pid 4242 to 10.0.0.2:7741 in 2s: downtime 31ms, 2 rounds, 3.9 MiB sent, " +
		"post-copy 5 pages in 20ms (4 faults, p99 1ms) (hybrid over quic); pre-copy did not converge, the downtime budget was overrun"
	if got != want {
		t.Errorf("summary\n got %q\nwant %q", got, want)
	}
	r.FailedPhase, r.Error = PhaseCheck, "pid 4242 is taken on the destination"
	if got, want := Summary(r), "migration of pid 4242 failed in phase check: pid 4242 is taken on the destination"; got != want {
		t.Errorf("summary %q, want %q", got, want)
	}
}

func TestFormat(t *testing.T) {
	for _, c := range []struct {
		n    float64
		want string
	}{{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536 << 20, "1.5 GiB"}, {1 << 50, "1024.0 TiB"}} {
		if got := formatBytes(c.n); got != c.want {
			t.Errorf("formatBytes(%v) = %q, want %q", c.n, got, c.want)
		}
	}
	for _, c := range []struct {
		d    time.Duration
		want string
	}{{1234567 * time.Microsecond, "1.23s"}, {45678 * time.Microsecond, "45.7ms"}, {789 * time.Microsecond, "789µs"}, {2 * time.Millisecond, "2ms"}} {
		if got := roundDuration(c.d); got != c.want {
			t.Errorf("roundDuration(%v) = %q, want %q", c.d, got, c.want)
		}
	}
}
