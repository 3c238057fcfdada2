package e2e

import (
	"bytes"
	"regexp"
	"testing"

	"godwit/internal/demo"
	"godwit/migrate"
)

// TestDemo runs the README's demo (scripts/demo) in each mode it offers:
// the program on host-b checks every page of its memory, and the demo
// fails if a page is wrong, the PID moved, or the agent's /metrics lack
// the migration.
func TestDemo(t *testing.T) {
	needRoot(t)
	prog := memtickerBin(t)
	for _, mode := range []migrate.Mode{migrate.ModePrecopy, migrate.ModePostcopy, migrate.ModeHybrid} {
		t.Run(string(mode), func(t *testing.T) {
			var out bytes.Buffer
			err := demo.Run(demo.Options{Godwit: godwitBin, Program: prog, MiB: 16, Rate: 8, Mode: mode, Out: &out})
			t.Log(out.String())
			if err != nil {
				t.Fatal(err)
			}
			if !regexp.MustCompile(`4096 pages verified`).Match(out.Bytes()) {
				t.Fatalf("the demo did not report the program's check of its 4096 pages")
			}
		})
	}
}
