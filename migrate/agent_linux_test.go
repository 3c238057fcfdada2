package migrate

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"godwit/internal/cpuinfo"
	"godwit/internal/logging"
	"godwit/lazypages"
	pb "godwit/migrate/internal/proto"
)

func TestCheckHost(t *testing.T) {
	cpu, err := hostCPU()
	if err != nil {
		t.Fatal(err)
	}
	self := int32(os.Getpid())
	free := int32(1 << 22) // above pid_max's ceiling: never in use
	for _, c := range []struct {
		h    *pb.Hello
		want string
	}{
		{&pb.Hello{Pid: free, Pids: []int32{free}, Files: []string{"/proc/self/exe"}}, ""},
		{&pb.Hello{Pid: self, Pids: []int32{self}}, "in use"},
		{&pb.Hello{Pid: free, Pids: []int32{free}, Files: []string{"/nonexistent/godwit"}}, "missing"},
		{&pb.Hello{Pid: free, Pids: []int32{free}, Files: []string{"relative"}}, "absolute"},
		{&pb.Hello{Pid: free, Pids: []int32{-1}}, "bad pid"},
		{&pb.Hello{Pid: 0}, "bad tree"},
	} {
		if c.h.Cpuinfo == nil {
			c.h.Cpuinfo = cpu
		}
		err := checkHost(c.h)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("checkHost(%v) = %v, want %q", c.h, err, c.want)
		}
	}
}

// Image files land only in the migration's final directory.
func TestWriteFileStaysInside(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "final"), 0o700); err != nil {
		t.Fatal(err)
	}
	in := &inbound{a: &Agent{cfg: AgentConfig{MaxImageBytes: 2*fileCharge + 10}}, dir: dir, rounds: []string{"final"}, files: map[string]*os.File{}}
	for _, name := range []string{"", ".", "..", "../x", "a/b", "parent", "x\x00"} {
		if err := in.writeFile(&pb.File{Name: name, Data: []byte("x"), Last: true}); err == nil {
			t.Errorf("image name %q accepted", name)
		}
	}
	if err := in.writeFile(&pb.File{Name: "core-1.img", Data: []byte("abc"), Last: true}); err != nil {
		t.Fatal(err)
	}
	if err := in.writeFile(&pb.File{Name: "core-1.img", Data: []byte("abc"), Last: true}); err == nil {
		t.Error("an image written twice")
	}
	if err := in.writeFile(&pb.File{Name: "big.img", Data: make([]byte, 11)}); err == nil {
		t.Error("images over the bound accepted")
	}
	if b, err := os.ReadFile(filepath.Join(dir, "final", "core-1.img")); err != nil || string(b) != "abc" {
		t.Errorf("core-1.img = %q, %v", b, err)
	}
}

// A peer cannot hold the agent's fds or fill its inodes with empty
// chunks: one image is open at a time, and their number is bounded.
func TestWriteFileBoundsFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "final"), 0o700); err != nil {
		t.Fatal(err)
	}
	in := &inbound{a: &Agent{cfg: AgentConfig{MaxImageBytes: 1 << 40}}, dir: dir, rounds: []string{"final"}, files: map[string]*os.File{}}
	if err := in.writeFile(&pb.File{Name: "a.img"}); err != nil {
		t.Fatal(err)
	}
	if err := in.writeFile(&pb.File{Name: "b.img"}); err == nil {
		t.Fatal("a second image begun while the first is open")
	}
	if err := in.writeFile(&pb.File{Name: "a.img", Last: true}); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := 0; i < maxImageFiles+1 && err == nil; i++ {
		err = in.writeFile(&pb.File{Name: fmt.Sprintf("f%d", i), Last: true})
	}
	if err == nil || !strings.Contains(err.Error(), "image files") {
		t.Fatalf("%d empty images accepted: %v", maxImageFiles+1, err)
	}
	for _, f := range in.files {
		f.Close()
	}
}

// A source CPU with features this one lacks is refused before anything
// moves, unless --cpu-cap says not to compare.
func TestCheckCPU(t *testing.T) {
	h, err := cpuinfo.Host()
	if err != nil {
		t.Fatal(err)
	}
	e := h.Entry()
	x := e.GetX86Entry()[0]
	for i := range x.Capability {
		x.Capability[i] = ^uint32(0)
	}
	b, err := proto.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkCPU(b, ""); err == nil {
		t.Error("a CPU with every feature bit set passed the check")
	}
	if err := checkCPU(b, "none"); err != nil {
		t.Errorf("--cpu-cap none: %v", err)
	}
	if err := checkCPU([]byte{0xff}, ""); err == nil {
		t.Error("garbage CPU description accepted")
	}
}

func TestPostcopyOf(t *testing.T) {
	resumed := time.Now()
	st := lazypages.Stats{FaultPages: 10, PushPages: 80, ZeroPages: 10, Faults: 100, AllPagesIn: resumed.Add(3 * time.Second)}
	for i := 100; i >= 1; i-- {
		st.FaultTimes = append(st.FaultTimes, time.Duration(i)*time.Millisecond)
	}
	pc := postcopyOf(st, resumed)
	if pc.Pages != 100 || pc.Faults != 100 || pc.Duration != 3*time.Second ||
		pc.FaultP50 != 51*time.Millisecond || pc.FaultP99 != 100*time.Millisecond {
		t.Errorf("postcopy %+v", pc)
	}
	// Every page in before the resume: no negative fill time; no faults,
	// no percentiles.
	pc = postcopyOf(lazypages.Stats{PushPages: 5, AllPagesIn: resumed.Add(-time.Millisecond)}, resumed)
	if pc.Pages != 5 || pc.Duration != 0 || pc.FaultP50 != 0 || pc.FaultP99 != 0 {
		t.Errorf("postcopy %+v", pc)
	}
}

// An agent starting removes the migration directories an agent that died
// left behind, and nothing else in its images dir.
func TestAgentRemovesStale(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "0123456789abcdef")
	keep := []string{"notes", "0123456789ABCDEF", "0123456789abcde"}
	if err := os.MkdirAll(filepath.Join(stale, "r1"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "r1", "pages-1.img"), []byte("memory"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, k := range keep {
		if err := os.Mkdir(filepath.Join(dir, k), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := removeStale(dir, logging.Default()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale migration directory still there: %v", err)
	}
	for _, k := range keep {
		if _, err := os.Stat(filepath.Join(dir, k)); err != nil {
			t.Errorf("%s removed: %v", k, err)
		}
	}
}
