package main

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"godwit/internal/daemon"
	"godwit/internal/engineopts"
	"godwit/internal/images"
	"godwit/internal/pagexfer"
	"godwit/lazypages"
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
		Long: `Save the memory of process PID into -D while it keeps running. The first round takes
every page and starts tracking writes (userfaultfd write-protect; a small "godwit-track"
process holds the tracking between rounds and exits with the target, at the final dump, or
after an hour); a round with --prev-images-dir DIR (the previous round, relative to -D) takes
only the pages written since. Finish with dump --track-mem --prev-images-dir DIR.`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, stop := interruptContext()
			defer stop()
			res, err := runPreDump(ctx, a.o)
			if err != nil {
				return err
			}
			if a.o.DisplayStats {
				fmt.Fprint(a.stdout, res.FormatStats())
			}
			return nil
		},
	}
	treeFlags(c.Flags(), a.o)
	return c
}

func lazyPagesCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "lazy-pages [--page-server --address A --port P] [-D DIR]",
		Short: "Serve the memory of lazily restored processes on demand",
		Long: `Serve the memory of the processes of the dump in -D that restore --lazy-pages
restores: it listens on lazy-pages.socket in the work directory (-W, default -D) for their
userfaultfds, answers their page faults first and pushes the rest in the background, from
the pages images in -D or, with --page-server, from a page server (page-server --lazy-pages
or dump --lazy-pages on the dumping host; plain TCP, --tls or --transport quic). It exits once every
page is in, telling the page server it may go. Post-copy cannot survive losing its source:
if the page server goes away or this daemon is killed, the restored processes are killed.`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			o, err := engineopts.LazyPages(a.o, a.log)
			if err != nil {
				return err
			}
			ctx, stop := interruptContext()
			defer stop()
			st, err := lazypages.Run(ctx, o)
			if err != nil {
				return err
			}
			if a.o.DisplayStats {
				fmt.Fprint(a.stdout, st.Format())
			}
			return nil
		},
	}
	pageServerClientFlags(c.Flags(), a.o)
	return c
}

func serviceCmd(a *app) *cobra.Command {
	var group string
	c := &cobra.Command{
		Use:   "service [--address SOCKET] [--service-group GROUP] [--daemon]",
		Short: "Serve CRIU's RPC protocol on a unix socket",
		Long: `Serve CRIU's RPC protocol on a unix socket (SOCK_SEQPACKET).
The socket is created 0600: only root and the service's own uid may use it
(each client's credentials are checked too). With --service-group GROUP it
is 0660 with that group, and the group's members may use it with limits:
they pass their images directory as a descriptor, and it must be theirs.
Only a stale socket is replaced at --address; any other file there is kept
and the service refuses to start. Idle clients are dropped after a minute.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			gid := -1
			if group != "" {
				var err error
				if gid, err = lookupGroup(group); err != nil {
					return &usageError{cmd, err}
				}
			}
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
			s, err := service.Listen(service.Config{Path: addr, Group: gid, Hooks: rpcHooks()})
			if err != nil {
				return err
			}
			defer s.Close()
			if err := a.writePidfile(os.Getpid()); err != nil {
				a.log.Errorf("%v", err)
			}
			if err := daemon.Ready(a.o.StatusFD); err != nil {
				a.log.Errorf("%v", err)
			}
			return s.Serve()
		},
	}
	daemonFlags(c.Flags(), a.o)
	c.Flags().StringVar(&a.o.Address, "address", "", "unix socket `path` to listen on (default criu_service.socket in -W)")
	c.Flags().StringVar(&group, "service-group", "", "make the socket 0660 for `group` (name or gid), whose members may use it with limits")
	return c
}

// lookupGroup resolves a group name or number.
func lookupGroup(name string) (int, error) {
	if gid, err := strconv.Atoi(name); err == nil && gid >= 0 {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, fmt.Errorf("--service-group: %w", err)
	}
	return strconv.Atoi(g.Gid)
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
			c, err := service.NewConn(f, rpcHooks())
			if err != nil {
				return fmt.Errorf("swrk: %w", err)
			}
			defer c.Close()
			return c.Serve()
		},
	}
}

func dedupCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "dedup [-D DIR]",
		Short: "Deduplicate pagemap data against the parent images",
		Long: `Punch out of the parent images of -D (its "parent" link, and theirs) every page that a
newer image in the chain replaces. The images in -D still restore the same; the parents
alone no longer do.`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			d, err := images.Open(a.o.ImagesDir, false)
			if err != nil {
				return fmt.Errorf("dedup: %w", err)
			}
			defer d.Close()
			st, err := pagexfer.Dedup(d)
			if err != nil {
				return fmt.Errorf("dedup: %w", err)
			}
			a.log.Infof("dedup: %d pages punched out of the parents of %d pagemap(s)", st.Pages, st.Pagemaps)
			return nil
		},
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
