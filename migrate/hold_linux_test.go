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
		{"garbage", stateLost},
		{"-1 5\n", stateLost},
	} {
		if got, _ := markedState([]byte(c.rec)); got != c.want {
			t.Errorf("record %q: %s, want %s", c.rec, got, c.want)
		}
	}
}
