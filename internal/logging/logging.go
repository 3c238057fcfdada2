// Package logging is godwit's log, with criu(8)'s levels: 0 none, 1 errors,
// 2 warnings (default), 3 information with timestamps, 4 debug.
package logging

import (
	"context"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"godwit/internal/opts"
)

// Logger writes leveled lines. It is safe for concurrent use.
type Logger struct {
	mu     sync.Mutex
	w      io.Writer
	level  int
	start  time.Time
	toFile bool // writes to --log-file, not to stderr

	// With --log-pid, name is the log file's path and tasks the loggers
	// of the tasks that Task opened, each on "name.PID".
	perPid bool
	name   string
	tasks  map[int]*Logger
	files  []*os.File
}

// New returns a logger writing lines up to level to w.
func New(w io.Writer, level int) *Logger {
	return &Logger{w: w, level: level, start: time.Now()}
}

var (
	defMu  sync.RWMutex
	defLog = New(os.Stderr, opts.DefaultLogLevel)
)

// Default returns the process-wide logger that SetDefault installed.
func Default() *Logger {
	defMu.RLock()
	defer defMu.RUnlock()
	return defLog
}

// SetDefault installs l as the process-wide logger.
func SetDefault(l *Logger) {
	defMu.Lock()
	defLog = l
	defMu.Unlock()
}

type ctxKey struct{}

// NewContext returns ctx carrying l: the engine logs a run's lines to the
// logger of the context it runs in, so that runs in one process (the RPC
// service's requests) each keep their own log without taking turns at
// the process-wide one.
func NewContext(ctx context.Context, l *Logger) context.Context {
	return context.WithValue(ctx, ctxKey{}, l)
}

// FromContext is the logger NewContext put in ctx, or else Default().
func FromContext(ctx context.Context) *Logger {
	if l, ok := ctx.Value(ctxKey{}).(*Logger); ok && l != nil {
		return l
	}
	return Default()
}

// Level is the logger's verbosity.
func (l *Logger) Level() int { return l.level }

// Enabled reports whether lines of level are written.
func (l *Logger) Enabled(level int) bool { return level <= l.level }

func (l *Logger) printf(level int, prefix, format string, args ...any) {
	if l == nil {
		l = Default() // a struct made without its logger
	}
	if !l.Enabled(level) {
		return
	}
	msg := fmt.Sprintf(format, args...)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.level >= opts.LogInfo {
		// CRIU's "(SS.uuuuuu)" time since start, from -v3 up.
		d := time.Since(l.start)
		fmt.Fprintf(l.w, "(%02d.%06d) ", int(d/time.Second), int(d%time.Second/time.Microsecond))
	}
	if len(msg) == 0 || msg[len(msg)-1] != '\n' {
		msg += "\n"
	}
	io.WriteString(l.w, prefix+msg)
}

// Errorf logs at level 1.
func (l *Logger) Errorf(format string, args ...any) {
	l.printf(opts.LogError, "Error: ", format, args...)
}

// Warnf logs at level 2.
func (l *Logger) Warnf(format string, args ...any) { l.printf(opts.LogWarn, "Warn: ", format, args...) }

// Infof logs at level 3.
func (l *Logger) Infof(format string, args ...any) { l.printf(opts.LogInfo, "", format, args...) }

// Debugf logs at level 4.
func (l *Logger) Debugf(format string, args ...any) { l.printf(opts.LogDebug, "", format, args...) }

// Errorf logs an error on the default logger.
func Errorf(format string, args ...any) { Default().Errorf(format, args...) }

// Warnf logs a warning on the default logger.
func Warnf(format string, args ...any) { Default().Warnf(format, args...) }

// Infof logs information on the default logger.
func Infof(format string, args ...any) { Default().Infof(format, args...) }

// Debugf logs debug detail on the default logger.
func Debugf(format string, args ...any) { Default().Debugf(format, args...) }

// Open makes the logger criu(8)'s options ask for: --log-file (relative to
// -W, default -D; "-" is stderr). With --log-pid, as in CRIU, the run's
// own lines stay in the file and each task's go to "FILE.PID" (see Task).
// It returns a close function for the files.
func Open(o *opts.Options) (*Logger, func() error, error) {
	if o.LogFile == "" || o.LogFile == "-" {
		return New(os.Stderr, o.Verbosity), func() error { return nil }, nil
	}
	name := o.WorkPath(o.LogFile)
	f, err := openFile(name)
	if err != nil {
		return nil, nil, err
	}
	l := New(f, o.Verbosity)
	l.toFile, l.perPid, l.name = true, o.LogPID, name
	l.files = []*os.File{f}
	return l, l.close, nil
}

// openFile opens (creating) the log file name for appending, emptied.
// The log is often in a directory someone else owns (an RPC client's
// images or work directory), so a symlink or a hard link placed there
// must not make godwit, as root, empty and write another file: the name
// is opened without following a symlink, and truncated only once it is
// known to be a regular file with no other link.
func openFile(name string) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log file: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("open log file: %w", err)
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFCHR:
		return f, nil // -o /dev/null, a tty
	case st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1:
		f.Close()
		return nil, fmt.Errorf("open log file %s: not a regular file with a single link", name)
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("open log file: %w", err)
	}
	return f, nil
}

// close closes the log file and the tasks' files.
func (l *Logger) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first error
	for _, f := range l.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	l.files = nil
	return first
}

// Task returns the logger for the lines about task pid: with --log-pid,
// one writing to "FILE.PID" (opened at the first call, truncated, 0600,
// closed with the run's log); otherwise l itself, whose lines name the
// task already. If that file cannot be opened, the task's lines stay in
// l's, after a warning there.
func (l *Logger) Task(pid int) *Logger {
	if !l.perPid {
		return l
	}
	l.mu.Lock()
	if t := l.tasks[pid]; t != nil {
		l.mu.Unlock()
		return t
	}
	f, err := openFile(l.name + "." + strconv.Itoa(pid))
	if err != nil {
		l.mu.Unlock()
		l.Warnf("task %d: %v: its lines stay here", pid, err)
		return l
	}
	t := New(f, l.level)
	t.start, t.toFile = l.start, true
	if l.tasks == nil {
		l.tasks = map[int]*Logger{}
	}
	l.tasks[pid] = t
	l.files = append(l.files, f)
	l.mu.Unlock()
	return t
}

// ToFile reports whether the logger writes to a --log-file rather than
// to stderr: the caller then also logs the final error there, where
// runc, test runners and people look for it.
func (l *Logger) ToFile() bool { return l.toFile }
