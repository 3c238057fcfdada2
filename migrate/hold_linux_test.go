package migrate

import (
	"fmt"
	"os"
	"testing"

	"godwit/internal/procfs"
)

// A resume record stands for "resumed" only while the process it names,
// with its start time, lives.
func TestMarkedState(t *testing.T) {
	st, err := procfs.ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		rec  string
		want string
	}{
		{fmt.Sprintf("%d %d\n", os.Getpid(), st.Starttime), stateResumed},
		{fmt.Sprintf("%d %d\n", os.Getpid(), st.Starttime+1), stateLost}, // PID reused
		{fmt.Sprintf("%d %d\n", 1<<22, st.Starttime), stateLost},         // above pid_max: gone
		{"", stateLost},
		{partialRecord, statePartial},
		{withOwner(fmt.Sprintf("%d %d\n", os.Getpid(), st.Starttime), fingerprint([]byte("cert"))), stateResumed},
		{withOwner(partialRecord, fingerprint([]byte("cert"))), statePartial},
		{"garbage", stateLost},
		{"-1 5\n", stateLost},
	} {
		if got, _ := markedState([]byte(c.rec)); got != c.want {
			t.Errorf("record %q: %s, want %s", c.rec, got, c.want)
		}
	}
}

// A resume record names the certificate that started the migration; a
// record without one (an older agent's) names none.
func TestRecordOwner(t *testing.T) {
	fp := fingerprint([]byte("cert"))
	for rec, want := range map[string]string{
		withOwner("12 34\n", fp):      fp,
		withOwner(partialRecord, fp):  fp,
		"12 34\n":                     "",
		withOwner("12 34\n", ""):      "",
		"12 34\nowner short\n":        "",
		"garbage\nowner " + fp + "\n": fp,
	} {
		if got := recordOwner([]byte(rec)); got != want {
			t.Errorf("record %q: owner %q, want %q", rec, got, want)
		}
	}
}
