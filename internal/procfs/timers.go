package procfs

import (
	"fmt"
	"strconv"
	"strings"
)

// Timer is one POSIX timer of /proc/PID/timers (fs/proc/base.c show_timer).
// The timer's current value and interval are not in the file: read them by
// an injected timer_gettime.
type Timer struct {
	ID         int
	Signal     int    // sigev_signo
	SigValue   uint64 // sigev_value (pointer-sized, printed in hex)
	Notify     string // "signal", "thread" (SIGEV_THREAD_ID) or "none"
	NotifyKind string // "pid" or "tid"
	NotifyPID  int
	ClockID    int
}

// ParseTimers parses the contents of /proc/PID/timers.
func ParseTimers(b []byte) ([]Timer, error) {
	var out []Timer
	for n, l := range lines(string(b)) {
		key, val, ok := strings.Cut(l, ":")
		if !ok {
			return nil, fmt.Errorf("procfs: timers line %d: no colon in %q", n+1, l)
		}
		val = strings.TrimSpace(val)
		if key == "ID" {
			id, err := strconv.Atoi(val)
			if err != nil {
				return nil, fmt.Errorf("procfs: timers line %d: id: %w", n+1, err)
			}
			out = append(out, Timer{ID: id})
			continue
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("procfs: timers line %d: %q before ID", n+1, key)
		}
		t := &out[len(out)-1]
		var err error
		switch key {
		case "signal": // "14/0000000000000000"
			sig, v, ok := strings.Cut(val, "/")
			if !ok {
				err = fmt.Errorf("bad signal %q", val)
				break
			}
			if t.Signal, err = strconv.Atoi(sig); err == nil {
				t.SigValue, err = parseHex64(v)
			}
		case "notify": // "signal/pid.1234", "thread/tid.77", "none/pid.5"
			how, who, ok1 := strings.Cut(val, "/")
			kind, id, ok2 := strings.Cut(who, ".")
			if !ok1 || !ok2 {
				err = fmt.Errorf("bad notify %q", val)
				break
			}
			t.Notify, t.NotifyKind = how, kind
			t.NotifyPID, err = strconv.Atoi(id)
		case "ClockID":
			t.ClockID, err = strconv.Atoi(val)
		}
		if err != nil {
			return nil, fmt.Errorf("procfs: timers line %d: %w", n+1, err)
		}
	}
	return out, nil
}

// ReadTimers reads /proc/PID/timers.
func ReadTimers(pid int) ([]Timer, error) {
	b, err := readFile(pid, "timers")
	if err != nil {
		return nil, err
	}
	ts, err := ParseTimers(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	return ts, nil
}
