package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"godwit/internal/daemon"
	"godwit/service"
)

// isArgError recognises cobra's own command-line errors (unknown command,
// wrong positional arguments), which get a usage hint.
func isArgError(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "unknown command") || strings.Contains(s, "arg(s)")
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return &usageError{cmd, fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), args)}
	}
	return nil
}

func preDumpCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "pre-dump -t PID [-D DIR]",
		Short: "Save the memory changes since the previous pre-dump, leaving the tree running",
		Args:  noArgs,
		RunE:  func(*cobra.Command, []string) error { return errNotYet("pre-dump") },
	}
	treeFlags(c.Flags(), a.o)
	return c
}

func lazyPagesCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "lazy-pages [--page-server --address A --port P] [-D DIR]",
		Short: "Serve the memory of lazily restored processes on demand",
		Args:  noArgs,
		RunE:  func(*cobra.Command, []string) error { return errNotYet("lazy-pages") },
	}
	pageServerClientFlags(c.Flags(), a.o)
	return c
}

func serviceCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "service [--address SOCKET] [--daemon]",
		Short: "Serve CRIU's RPC protocol on a unix socket",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			if a.o.Daemon {
				pid, err := daemon.Start(a.args)
				if err != nil {
					return err
				}
				return a.writePidfile(pid)
			}
			addr := a.o.Address
			if addr == "" {
				addr = a.o.WorkPath("criu_service.socket") // CRIU's default name
			}
			return service.Listen(addr, func() {
				if err := a.writePidfile(os.Getpid()); err != nil {
					a.log.Errorf("%v", err)
				}
				if err := daemon.Ready(a.o.StatusFD); err != nil {
					a.log.Errorf("%v", err)
				}
			})
		},
	}
	daemonFlags(c.Flags(), a.o)
	c.Flags().StringVar(&a.o.Address, "address", "", "unix socket `path` to listen on (default criu_service.socket in -W)")
	return c
}

func swrkCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:    "swrk FD",
		Short:  "Serve CRIU's RPC protocol on an inherited socket (used by go-criu, runc)",
		Hidden: true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return &usageError{cmd, errors.New("swrk takes one argument: the socket's file descriptor")}
			}
			if fd, err := strconv.Atoi(args[0]); err != nil || fd < 0 {
				return &usageError{cmd, fmt.Errorf("swrk: %q is not a file descriptor", args[0])}
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			fd, _ := strconv.Atoi(args[0])
			f := os.NewFile(uintptr(fd), "swrk")
			defer f.Close()
			c, err := service.NewConn(f)
			if err != nil {
				return fmt.Errorf("swrk: %w", err)
			}
			return c.Serve()
		},
	}
}

func dedupCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "dedup [-D DIR]",
		Short: "Deduplicate pagemap data against the parent images",
		Args:  noArgs,
		RunE:  func(*cobra.Command, []string) error { return errNotYet("dedup") },
	}
}

func execCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:                "exec -t PID SYSCALL [ARGS...]",
		Short:              "Deprecated: execute a system call inside a task",
		DisableFlagParsing: true, // it fails whatever is passed
		RunE: func(*cobra.Command, []string) error {
			return errors.New("exec is deprecated and not provided (use Compel, or godwit's ptrace injection package)")
		},
	}
	return c
}

func migrateCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "migrate",
		Short: "Live-migrate processes to another host",
		Args:  noArgs,
	}
	send := &cobra.Command{
		Use:   "send --to HOST PID",
		Short: "Move a running process tree to the agent on HOST",
		Args:  cobra.ExactArgs(1),
		RunE:  func(*cobra.Command, []string) error { return errNotYet("migrate send") },
	}
	send.Flags().String("to", "", "destination agent `host[:port]`")
	c.AddCommand(send)
	return c
}

func agentCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "agent",
		Short: "Run the migration agent that receives and sends processes",
		Args:  noArgs,
		RunE:  func(*cobra.Command, []string) error { return errNotYet("agent") },
	}
	return c
}
