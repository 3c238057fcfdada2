package procfs

import (
	"os"
	"testing"
)

// seed adds the live file of our own process (when readable) and samples.
func seed(f *testing.F, live string, samples ...string) {
	if b, err := os.ReadFile("/proc/self/" + live); err == nil {
		f.Add(b)
	}
	for _, s := range samples {
		f.Add([]byte(s))
	}
}

func FuzzParseMaps(f *testing.F) {
	seed(f, "maps", sampleMaps, "1-2 r--p 0 00:00 0\n")
	f.Fuzz(func(t *testing.T, b []byte) {
		ms, err := ParseMaps(b)
		if err != nil {
			return
		}
		for _, m := range ms {
			if m.End < m.Start || len(m.Perms) != 4 {
				t.Fatalf("accepted bad mapping %+v", m)
			}
		}
	})
}

func FuzzParseSmaps(f *testing.F) {
	seed(f, "smaps", sampleSmaps)
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := ParseSmaps(b)
		if err != nil {
			return
		}
		for _, e := range es {
			if e.End < e.Start || e.Fields == nil {
				t.Fatalf("accepted bad entry %+v", e)
			}
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	seed(f, "status", sampleStatus)
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseStatus(b)
		if err == nil && (st.Pid == 0 || st.Tgid == 0) {
			t.Fatalf("accepted status without Pid/Tgid")
		}
	})
}

func FuzzParseStat(f *testing.F) {
	seed(f, "stat", sampleStat)
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseStat(b)
	})
}

func FuzzParseFDInfo(f *testing.F) {
	seed(f, "fdinfo/0", "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t9\neventfd-count:        3\n",
		"pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1\ntfd:        5 events:       19 data:                5  pos:0 ino:402 sdev:d\n")
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseFDInfo(b)
	})
}

func FuzzParseMountinfo(f *testing.F) {
	seed(f, "mountinfo", "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw\n")
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseMountinfo(b)
	})
}

func FuzzParseTimers(f *testing.F) {
	seed(f, "timers", "ID: 0\nsignal: 14/00007ffc12345678\nnotify: signal/pid.1234\nClockID: 1\n")
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseTimers(b)
	})
}

func FuzzParseAuxv(f *testing.F) {
	seed(f, "auxv")
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseAuxv(b)
	})
}
