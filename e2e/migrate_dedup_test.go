package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestMigrateZeroAndDuplicatePages moves a program whose memory is half
// zero-filled (private pages it wrote zeros into) and a quarter copies of
// one page: by default those pages cross as short records, so the rounds'
// page data drops to about a quarter of what --send-all-pages sends, and
// the program checks on host B that every page holds what it wrote. The
// figures are logged next to the TLS floor of the same run.
func TestMigrateZeroAndDuplicatePages(t *testing.T) {
	const mib = 64
	const pages = mib * 256
	m := newMigLab(t)
	m.startAgent()
	floor := tlsFloor(t, m, 64<<20)
	t.Logf("floor: TLS over loopback %.0f MB/s", floor/1e6)
	sent := map[string]uint64{}
	hashed := map[string]bool{}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"dedup", nil}, {"send-all", []string{"--send-all-pages"}},
		{"dedup,uncompressed", []string{"--compress", "none"}}, {"send-all,uncompressed", []string{"--compress", "none", "--send-all-pages"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := startOn(t, m.a, workloads["counter"], "-m", "64", "-z")
			code, res, stderr := m.send(w, append([]string{"--max-rounds", "2"}, c.args...)...)
			if code != 0 {
				t.Fatalf("migrate send: exit %d: %s", code, stderr)
			}
			rp := m.moved(w)
			var bytes, zero, same uint64
			for _, r := range res.Rounds {
				bytes += r.Bytes
				zero += r.ZeroPages
				same += r.SamePages
				if r.Bytes != (r.Pages-r.ZeroPages-r.SamePages)*4096 {
					t.Errorf("round %+v: bytes are not the data pages'", r)
				}
			}
			sent[c.name] = bytes
			t.Logf("%s: %.1f MiB of page data sent (%d zero and %d duplicate pages as records), total %v, downtime %v; the TLS floor moves the 64 MiB in %v",
				c.name, float64(bytes)/(1<<20), zero, same, res.Total.Round(time.Millisecond), res.Downtime.Round(time.Millisecond),
				time.Duration(float64(mib<<20)/floor*float64(time.Second)).Round(time.Millisecond))
			if res.Auto != nil {
				t.Logf("%s: the link probe read %.0f MB/s", c.name, res.Auto.Link/1e6)
			}
			r0 := res.Rounds[0]
			if !strings.HasPrefix(c.name, "send-all") {
				// The first round reads the whole memory: its zero half and
				// duplicate quarter (but the first copy) go as records.
				// Duplicates are looked for only on a link slower than the
				// hash (the probe of --compress auto); --compress none
				// probes nothing and always looks.
				wantSame := uint64(pages/4 - 1)
				if res.Auto != nil && res.Auto.Link > 200e6 {
					wantSame = 0
					if r0.SamePages != 0 {
						t.Errorf("round 0 %+v: duplicates hashed on a %.0f MB/s link", r0, res.Auto.Link/1e6)
					}
				}
				hashed[c.name] = wantSame > 0
				if r0.ZeroPages < pages/2 || r0.SamePages < wantSame {
					t.Errorf("round 0 %+v: want at least %d zero and %d duplicate pages as records", r0, pages/2, wantSame)
				}
			} else if zero != 0 || same != 0 {
				t.Errorf("--send-all-pages: %d zero and %d duplicate pages as records", zero, same)
			}
			finishMoved(t, w, rp)
		})
	}
	for _, sfx := range []string{"", ",uncompressed"} {
		// Half the memory is zeros and a quarter duplicates: a third of the
		// data with both, just over half with zeros alone.
		d, a := sent["dedup"+sfx], sent["send-all"+sfx]
		if hashed["dedup"+sfx] && (a == 0 || d*3 > a) {
			t.Errorf("%s: page data sent %d bytes with records, %d without: want under a third", sfx, d, a)
		} else if a == 0 || d*100 > a*55 {
			t.Errorf("%s: page data sent %d bytes with zero records, %d without: want under 55%%", sfx, d, a)
		}
	}
}
