package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"godwit/internal/actions"
	"godwit/internal/logging"
	"godwit/internal/opts"
	"godwit/lazypages"
)

// Version is godwit's release, set at link time (-X main.Version=...).
var Version = "0.1.0-dev"

// app is one invocation: its options and its output streams.
type app struct {
	args    []string // the command line, for re-executing as a daemon
	o       *opts.Options
	stdout  io.Writer
	stderr  io.Writer
	log     *logging.Logger
	closers []func() error
	scripts *actions.Scripts
}

// exitError carries a specific exit status (check's, restore's task status).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}

// usageError marks errors in the command line itself, printed with a hint.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (e *usageError) Error() string { return e.err.Error() }

// notYet names options whose capability a later part of godwit delivers.
// Using one fails loudly rather than being ignored.
var notYet = map[string]bool{
	"libdir":                 true, // CRIU plugins are C shared objects; godwit has no plugin ABI
	"external":               true,
	"freeze-cgroup":          true,
	"manage-cgroups":         true,
	"cgroup-props":           true,
	"cgroup-props-file":      true,
	"cgroup-dump-controller": true,
	"cgroup-root":            true,
	"tcp-established":        true,
	"skip-in-flight":         true,
	"tcp-close":              true,
	"evasive-devices":        true,
	"force-irmap":            true,
	"auto-dedup":             true,
	"file-locks":             true,
	"link-remap":             true,
	"ghost-limit":            true,
	"shell-job":              true,
	"track-mem":              true,
	"page-server":            true,
	"lazy-pages":             true,
	"inherit-fd":             true,
	"root":                   true,
	"veth-pair":              true,
	"weak-sysctls":           true,
	"prev-images-dir":        true,
	"restore-sibling":        true,
}

// doneIn lists, per command, the notYet options it already implements.
var doneIn = map[string]map[string]bool{
	"page-server":  {"prev-images-dir": true, "lazy-pages": true},
	"dump":         {"page-server": true, "freeze-cgroup": true, "lazy-pages": true, "prev-images-dir": true, "track-mem": true, "auto-dedup": true, "ghost-limit": true, "file-locks": true, "tcp-established": true, "skip-in-flight": true, "shell-job": true, "external": true, "link-remap": true, "evasive-devices": true, "force-irmap": true},
	"pre-dump":     {"page-server": true, "prev-images-dir": true, "track-mem": true},
	"restore":      {"shell-job": true, "lazy-pages": true, "auto-dedup": true, "file-locks": true, "inherit-fd": true, "restore-sibling": true, "tcp-established": true, "tcp-close": true},
	"lazy-pages":   {"page-server": true},
	"migrate send": {"file-locks": true, "tcp-established": true, "skip-in-flight": true, "shell-job": true, "external": true, "link-remap": true, "evasive-devices": true, "force-irmap": true, "ghost-limit": true},
}

func newRoot(a *app) *cobra.Command {
	o := a.o
	var showVersion bool
	root := &cobra.Command{
		Use:   "godwit",
		Short: "Checkpoint, restore and live-migrate Linux processes",
		Long: `godwit checkpoints running Linux processes and moves them live between machines.
Its commands and options are CRIU's (see criu(8)); migrate and agent add live migration.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		Args:              cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if showVersion {
				return printVersion(a)
			}
			return cmd.Help()
		},
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if showVersion { // -V is common to every command, as in criu(8)
				if err := printVersion(a); err != nil {
					return err
				}
				return &exitError{code: 0}
			}
			return a.setup(cmd)
		},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return &usageError{c, err} })
	commonFlags(root.PersistentFlags(), o)
	root.PersistentFlags().BoolVarP(&showVersion, "version", "V", false, "print the version and exit")

	root.AddCommand(
		dumpCmd(a), preDumpCmd(a), restoreCmd(a), checkCmd(a),
		pageServerCmd(a), lazyPagesCmd(a), serviceCmd(a), swrkCmd(a),
		dedupCmd(a), cpuinfoCmd(a), execCmd(a), versionCmd(a),
		migrateCmd(a), agentCmd(a), certsCmd(a),
	)
	addNegationsTree(root)
	return root
}

func addNegationsTree(c *cobra.Command) {
	addNegations(c.PersistentFlags())
	addNegations(c.Flags())
	for _, sub := range c.Commands() {
		addNegationsTree(sub)
	}
}

// commandName is the command path below godwit ("dump", "cpuinfo check").
func commandName(cmd *cobra.Command) string {
	p := cmd.CommandPath()
	if len(p) > len("godwit ") {
		return p[len("godwit "):]
	}
	return ""
}

// setup does criu(8)'s common work before any command: --close, options
// checks, logging.
func (a *app) setup(cmd *cobra.Command) error {
	for _, fd := range a.o.Close {
		if fd <= 2 {
			return fmt.Errorf("--close %d: refusing to close a standard stream", fd)
		}
		if err := unix.Close(fd); err != nil {
			return fmt.Errorf("--close %d: %w", fd, err)
		}
	}
	// The log first, so that every later failure, refused options
	// included, ends up in --log-file too.
	l, closeLog, err := logging.Open(a.o)
	if err != nil {
		return err
	}
	a.log = l
	a.closers = append(a.closers, closeLog)
	logging.SetDefault(l)
	var unsupported error
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if unsupported == nil && notYet[f.Name] && !doneIn[commandName(cmd)][f.Name] {
			unsupported = fmt.Errorf("--%s is not supported yet", f.Name)
		}
	})
	if unsupported != nil {
		return unsupported
	}
	if err := a.o.Validate(commandName(cmd)); err != nil {
		return &usageError{cmd, err}
	}
	a.scripts = &actions.Scripts{Commands: a.o.ActionScript, ImagesDir: a.o.ImagesDir}
	return nil
}

// writePidfile writes pid to --pidfile, if given, relative to -W.
func (a *app) writePidfile(pid int) error {
	if a.o.PidFile == "" {
		return nil
	}
	name := a.o.WorkPath(a.o.PidFile)
	if err := os.WriteFile(name, []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("write pidfile: %w", err)
	}
	return nil
}

func printVersion(a *app) error {
	_, err := fmt.Fprintf(a.stdout, "Version: %s\n", Version)
	return err
}

func versionCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print godwit's version",
		Args:  cobra.NoArgs,
		RunE:  func(*cobra.Command, []string) error { return printVersion(a) },
	}
}

// run executes one godwit command line and returns its exit status.
func run(args []string, stdout, stderr io.Writer) int {
	args = expandVerbosity(args)
	a := &app{args: args, o: opts.New(), stdout: stdout, stderr: stderr}
	root := newRoot(a)
	root.SetArgs(args)
	err := root.Execute()
	if err != nil && a.log != nil && a.log.ToFile() {
		// The run's last log line names the failure, as CRIU's does;
		// stderr still gets it below for the person at the terminal.
		a.log.Errorf("%v", err)
	}
	for _, c := range a.closers {
		c()
	}
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(stderr, "godwit: %v\n", ee.err)
		}
		return ee.code
	}
	fmt.Fprintf(stderr, "godwit: %v\n", err)
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", ue.cmd.CommandPath())
	} else if c, _, ferr := root.Find(args); ferr == nil && isArgError(err) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", c.CommandPath())
	}
	return 1
}

func main() {
	lazypages.MaybeGuard() // the lazy-pages daemon's guard is this binary too
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
