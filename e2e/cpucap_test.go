package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// dump --cpu-cap saves cpuinfo.img; restore compares it with this CPU, and
// refuses, naming what is missing, when the dump's CPU had more — unless
// --cpu-cap=none.
func TestCPUCap(t *testing.T) {
	needRoot(t)
	w := startC(t, false)
	dir := w.dump(t, "--cpu-cap")
	w.reapKilled(t)
	img := filepath.Join(dir, "cpuinfo.img")
	if _, err := os.Stat(img); err != nil {
		t.Fatalf("dump --cpu-cap wrote no cpuinfo.img: %v", err)
	}

	// A CPU with every feature bit: edited with Debian's crit.
	out, err := exec.Command("crit", "decode", "-i", img).Output()
	if err != nil {
		t.Fatalf("crit decode: %v", err)
	}
	var doc map[string]any
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	x86 := doc["entries"].([]any)[0].(map[string]any)["x86_entry"].([]any)[0].(map[string]any)
	caps := x86["capability"].([]any)
	for i := range caps {
		caps[i] = float64(0xffffffff)
	}
	edited, _ := json.Marshal(doc)
	bigger := t.TempDir()
	copyMissing(t, dir, bigger)
	os.Remove(filepath.Join(bigger, "cpuinfo.img"))
	enc := exec.Command("crit", "encode", "-o", filepath.Join(bigger, "cpuinfo.img"))
	enc.Stdin = bytes.NewReader(edited)
	if out, err := enc.CombinedOutput(); err != nil {
		t.Fatalf("crit encode: %v\n%s", err, out)
	}
	code, msg := godwit(t, "restore", "-D", bigger)
	oneLineError(t, code, msg, "missing here")
	if pidExists(w.pid) {
		t.Fatal("a restore refused for the CPU started the program")
	}

	r := restore(t, w, bigger, "--cpu-cap=none")
	if code := r.finish(t, w); code != 0 {
		t.Fatalf("restore --cpu-cap=none: program exited %d\n%s", code, w.tail())
	}
	w.checkLog(0)
}
