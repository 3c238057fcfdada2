package e2e

import (
	"strings"
	"testing"
)

// TestSignalLoop dumps and restores workloads/sigloop.c, which tgkills
// itself, in a loop, the signals the injected code's trap could use
// (blocked, sent, seen pending, caught once; the real-time ones queued
// twice with SI_QUEUE and a value): dumps that leave it running and a dump
// and restore must neither lose one of its sends, nor deliver it a signal
// it did not send, nor change a signal's siginfo or the order of two.
func TestSignalLoop(t *testing.T) {
	needRoot(t)
	w := startWorkload(t, cWorkload(t, "sigloop"))
	for range 5 {
		w.dump(t, "-R")
		w.waitTicks(3)
	}
	if log := readFile(w.log); strings.Contains(log, "lost") || strings.Contains(log, "caught") {
		t.Fatalf("after dumps that left it running:\n%s", w.tail())
	}
	dir := w.dump(t)
	w.reapKilled(t)
	r := restore(t, w, dir)
	if code := r.finish(t, w); code != 0 || !strings.Contains(readFile(w.log), "sigloop ok") {
		t.Fatalf("restored sigloop exited %d:\n%s", code, w.tail())
	}
}
