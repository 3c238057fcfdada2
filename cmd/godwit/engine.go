package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"godwit/dumper"
	"godwit/internal/engineopts"
	"godwit/internal/joinns"
	"godwit/restorer"
)

// interruptContext is done when godwit gets SIGINT, SIGTERM or SIGHUP:
// the engine then rolls back (the target resumes as it was, partial
// images and tasks are removed) instead of godwit dying mid-step. Further
// signals are absorbed until stop, which gives them back their default
// action and reports whether one came (none is lost between the engine's
// last check and stop).
func interruptContext() (context.Context, func() (signaled bool)) {
	ctx, cancel := context.WithCancelCause(context.Background())
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, unix.SIGTERM, unix.SIGHUP)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for sig := range ch {
			cancel(fmt.Errorf("got %v", sig))
		}
	}()
	return ctx, func() bool {
		signal.Stop(ch) // no delivery into ch after this returns
		close(ch)
		<-done
		signaled := ctx.Err() != nil
		cancel(nil)
		return signaled
	}
}

func dumpCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "dump -t PID [-D DIR]",
		Short: "Checkpoint a process into image files",
		Long: `Checkpoint process PID (with all its threads) into image files in -D, then kill it
(default), leave it running (-R) or leave it stopped (-s). On any error the process
resumes as it was. With --lazy-pages --address A --port P (plain TCP, --tls or --transport
quic) the pages of lazy memory stay out of the images, unread, and the process stays frozen
while they are served from its memory on A:P until the lazy-pages daemon of the restore has
them all; then it is finished as above (post-copy cannot survive losing its source: keep
this running until then). On top of pre-dump rounds (--prev-images-dir with --track-mem)
only the pages written since the last round stay lazy; the others are left to the parent
images.`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			o, err := engineopts.Dump(a.o)
			if err != nil {
				return err
			}
			ctx, stop := interruptContext()
			defer stop()
			var res *dumper.Result
			if a.o.LazyPages {
				ls := engineopts.DumpLazy(a.o, a.log)
				ls.Listening = func(addr string) { fmt.Fprintf(a.stdout, "Serving lazy pages on %s\n", addr) }
				res, err = dumper.DumpLazyContext(ctx, o, a.scripts, ls)
			} else {
				res, err = dumper.DumpContext(ctx, o, a.scripts)
			}
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
	dumpOnlyFlags(c.Flags(), a.o)
	return c
}

func restoreCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "restore [-D DIR] [-d] [-s]",
		Short: "Restore a process from image files",
		Long: `Restore the process dumped in -D with its original PID and thread ids. Without -d,
godwit waits for it and exits with its exit status (128+N if signal N killed it).`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			// First: from here on godwit runs in the joined namespaces.
			if err := joinns.Enter(a.o.JoinNS); err != nil {
				return fmt.Errorf("restore: %w", err)
			}
			o, err := engineopts.Restore(a.o, a.stdout)
			if err != nil {
				return err
			}
			ctx, stop := interruptContext()
			r, err := restorer.RestoreContext(ctx, o, a.scripts)
			// Once the task runs on its own, godwit's signals are its
			// own again (a SIGTERM while waiting ends godwit only).
			signaled := stop()
			if err != nil {
				return err
			}
			if signaled {
				// The signal came as the task was being resumed:
				// undone like any interrupted restore, not lost.
				r.Abort()
				return fmt.Errorf("restore %d: interrupted: %w", r.PID(), context.Cause(ctx))
			}
			if err := a.writePidfile(r.PID()); err != nil {
				r.Close()
				return err
			}
			if a.o.RestoreDetach {
				r.Close()
				return nil
			}
			code, err := r.Wait()
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code: code}
			}
			return nil
		},
	}
	restoreFlags(c.Flags(), a.o)
	return c
}
