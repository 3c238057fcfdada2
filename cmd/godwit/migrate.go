package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"godwit/internal/daemon"
	"godwit/internal/engineopts"
	"godwit/internal/netlock"
	"godwit/internal/opts"
	"godwit/migrate"
)

func migrateCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "migrate",
		Short: "Live-migrate processes to another host",
		Args:  noArgs,
	}
	var o migrate.SendOptions
	var mode string
	var asJSON bool
	send := &cobra.Command{
		Use:   "send --to HOST[:PORT] -t PID",
		Short: "Move a running process tree to the agent on HOST",
		Long: `Move the running tree of PID to the godwit agent on HOST (port 7355 by default), over
mutual TLS. The agent first checks that it can take the tree (its PIDs free there, the
files it has open present at the same paths); pre-copy rounds then send memory while the
program runs, until the predicted last delta fits --downtime-budget, the rounds stop
shrinking, or --max-rounds (0: stop-and-copy). The tree is then frozen and its last
delta and state sent; the agent rebuilds it, and only then is the source killed and the
copy resumed, its memory filled after the resume from the agent's own images (unless
--no-lazy-restore); the migration ends when every page is in. Before the switch-over any
failure leaves the source running as it was.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Pid <= 0 {
				return &usageError{cmd, errors.New("migrate send needs -t PID")}
			}
			if o.To == "" {
				return &usageError{cmd, errors.New("migrate send needs --to HOST")}
			}
			o.Mode = migrate.Mode(mode)
			o.FileLocks, o.TCPEstablished, o.SkipInFlight = a.o.FileLocks, a.o.TCPEstablish, a.o.SkipInFlight
			o.ShellJob, o.ExtUnixSk, o.ActionScripts = a.o.ShellJob, a.o.ExtUnixSk, a.o.ActionScript
			nl, err := netlock.ParseMethod(a.o.NetworkLock)
			if err != nil {
				return &usageError{cmd, err}
			}
			o.NetworkLock = nl
			// The dump's file options, parsed as dump parses them.
			fo, err := engineopts.Dump(a.o)
			if err != nil {
				return &usageError{cmd, err}
			}
			o.FD, o.GhostLimit, o.ExtUnix, o.ExtTTY = fo.FD, fo.GhostLimit, fo.ExtUnix, fo.ExtTTY
			// A terminal gets a live line and a summary, --json one
			// Result; otherwise stdout gets nothing, stderr a line a round.
			p := migrate.NewProgress(a.stdout, a.stderr, asJSON)
			o.OnRound, o.OnPhase = p.Round, p.Phase
			o.Notice = func(line string) { fmt.Fprintln(a.stderr, line) }
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			res, err := migrate.Send(ctx, o)
			if res != nil {
				p.Done(*res)
			}
			return err
		},
	}
	f := send.Flags()
	f.StringVar(&o.To, "to", "", "destination agent `host[:port]`")
	f.IntVarP(&o.Pid, "tree", "t", 0, "root `PID` of the tree to move")
	f.StringVar(&mode, "mode", "precopy", "precopy; postcopy (resume on the destination at once, pages fetched from the frozen source; needs --tls-server-cert/--tls-server-key); or hybrid (pre-copy rounds, then the last dirty pages fetched after the resume, as postcopy)")
	f.DurationVar(&o.DowntimeBudget, "downtime-budget", 50*time.Millisecond, "stop pre-copy once the last delta is predicted to move within `duration`")
	f.IntVar(&o.MaxRounds, "max-rounds", 8, "at most `n` pre-copy rounds (0: stop-and-copy)")
	f.StringVar(&o.Compress, "compress", migrate.CompressAuto, "page streams: zstd, none, or auto (time the link and zstd on a sample of the program's memory first; compress when zstd is the faster and shrinks the pages); over --transport tls")
	f.IntVar(&o.Streams, "streams", 0, "stripe each round's pages over `n` connections, each encrypted on its own core (0: tls one per core, 2 to 4; quic one; a compressed tls round uses one)")
	f.StringVar(&o.Transport, "transport", "tls", "page streams: tls (TCP; measured about twice as fast as quic here, see e2e TestMigrateTransports) or quic; both with mutual TLS")
	f.StringVar(&o.TLS.CACert, "tls-cacert", "", "CA certificate `file` that signed the agent's certificate")
	f.StringVar(&o.TLS.Cert, "tls-cert", "", "this host's client certificate `file`")
	f.StringVar(&o.TLS.Key, "tls-key", "", "this host's private key `file`")
	f.StringVar(&o.ServerTLS.Cert, "tls-server-cert", "", "this host's server certificate `file` (post-copy: serve the lazy pages to the agent)")
	f.StringVar(&o.ServerTLS.Key, "tls-server-key", "", "the server certificate's private key `file`")
	f.StringVar(&o.ServerName, "tls-server-name", "", "name the agent's certificate must carry (default: the host of --to)")
	f.StringVar(&o.CPUCap, "cpu-cap", "", "CPU capabilities the destination must match (as dump's --cpu-cap)")
	f.BoolVarP(&a.o.FileLocks, "file-locks", "l", false, "move the file locks the tree holds")
	f.BoolVar(&a.o.TCPEstablish, "tcp-established", false, "move established TCP connections (locked here from the freeze, and on the destination until it runs)")
	f.BoolVar(&a.o.SkipInFlight, "skip-in-flight", false, "leave out TCP connections not accepted yet")
	f.BoolVarP(&a.o.ShellJob, "shell-job", "j", false, "allow a shell job (as dump and restore --shell-job)")
	f.BoolVar(&a.o.ExtUnixSk, "ext-unix-sk", false, "allow unix sockets whose peer is outside the tree")
	f.Var(&listValue[opts.External]{p: &a.o.External, parse: opts.ParseExternal, typ: "type[id]:value"}, "external", "allow a unix socket whose peer is outside the tree: unix[inode] (file[] and tty[] need --inherit-fd, which cannot cross hosts)")
	f.BoolVar(&a.o.LinkRemap, "link-remap", false, "link unlinked files back if possible (on this host's file system: the destination must share it)")
	f.BoolVar(&a.o.EvasiveDevs, "evasive-devices", false, "use any path to a device file if the original is inaccessible")
	f.BoolVar(&a.o.ForceIrmap, "force-irmap", false, "force resolving names of inotify and fsnotify watches")
	f.Var(sizeValue{&a.o.GhostLimit}, "ghost-limit", "largest deleted file carried to the destination (K, M, G suffixes)")
	ghostFiemapFlag(f, a.o)
	networkLockFlag(f, a.o)
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	f.BoolVar(&o.NoOverlap, "no-overlap", false, "have the agent restore from the images after the freeze instead of making the task and writing each round's pages into it during the rounds")
	f.BoolVar(&o.SendAllPages, "send-all-pages", false, "send the data of zero-filled and duplicate pages too (by default they cross as short records); for measurements")
	f.BoolVar(&o.FullFill, "no-lazy-restore", false, "have the agent fill every page before the resume (by default it resumes at once and fills from its own images)")
	c.AddCommand(send, resolveCmd(a), historyCmd(a))
	return c
}

func historyCmd(a *app) *cobra.Command {
	var o migrate.HistoryOptions
	c := &cobra.Command{
		Use:   "history --to HOST",
		Short: "Print the agent's finished migrations (JSON), over mutual TLS",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.To == "" {
				return &usageError{cmd, errors.New("migrate history needs --to HOST")}
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			h, err := migrate.FetchHistory(ctx, o)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(a.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(h)
		},
	}
	f := c.Flags()
	f.StringVar(&o.To, "to", "", "agent `host[:port]`")
	f.StringVar(&o.TLS.CACert, "tls-cacert", "", "CA certificate `file` that signed the agent's certificate")
	f.StringVar(&o.TLS.Cert, "tls-cert", "", "this host's client certificate `file`")
	f.StringVar(&o.TLS.Key, "tls-key", "", "this host's private key `file`")
	f.StringVar(&o.ServerName, "tls-server-name", "", "name the agent's certificate must carry (default: the host of --to)")
	return c
}

func resolveCmd(a *app) *cobra.Command {
	var o migrate.ResolveOptions
	c := &cobra.Command{
		Use:   "resolve --to HOST [ID [resume|abort]]",
		Short: "Settle a migration whose switch-over lost its answer (in doubt)",
		Long: `Without ID, list the migrations whose copy the agent on HOST holds stopped. With ID, print
that migration's state there; with a decision, resume or kill the held copy and print the
outcome. Resume only if the source tree is gone (or held stopped and named by
--source-pid, which is then killed once the copy runs, or continued if the agent has no
copy). See docs/migration.md.`,
		Args: cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.To == "" {
				return &usageError{cmd, errors.New("migrate resolve needs --to HOST")}
			}
			if len(args) > 0 {
				o.ID = args[0]
			}
			if len(args) > 1 {
				o.Decision = args[1]
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			r, err := migrate.Resolve(ctx, o)
			if err != nil {
				return err
			}
			if o.ID == "" {
				for _, h := range r.Held {
					state := "waiting"
					if h.InDoubt {
						state = "in-doubt"
					}
					fmt.Fprintf(a.stdout, "%s\t%s\tpid %d\tfrom %s\tsince %s\n", h.ID, state, h.PID, h.Source, h.Since.Format(time.RFC3339))
				}
				return nil
			}
			fmt.Fprintf(a.stdout, "%s\t%s", o.ID, r.State)
			if r.PID > 0 {
				fmt.Fprintf(a.stdout, "\tpid %d", r.PID)
			}
			if r.Source != "" {
				fmt.Fprintf(a.stdout, "\tsource %d %s", o.SourcePID, r.Source)
			}
			fmt.Fprintln(a.stdout)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&o.To, "to", "", "agent `host[:port]`")
	f.IntVar(&o.SourcePID, "source-pid", 0, "the held source tree's root `PID` on this host (left stopped by an in-doubt send)")
	f.StringVar(&o.TLS.CACert, "tls-cacert", "", "CA certificate `file` that signed the agent's certificate")
	f.StringVar(&o.TLS.Cert, "tls-cert", "", "this host's client certificate `file`")
	f.StringVar(&o.TLS.Key, "tls-key", "", "this host's private key `file`")
	f.StringVar(&o.ServerName, "tls-server-name", "", "name the agent's certificate must carry (default: the host of --to)")
	return c
}

func agentCmd(a *app) *cobra.Command {
	var cfg migrate.AgentConfig
	var port int
	var metricsAddr string
	c := &cobra.Command{
		Use:   "agent --address A --port P --images-dir DIR --tls-cacert CA --tls-cert CERT --tls-key KEY",
		Short: "Run the migration agent that receives processes",
		Long: `Receive migrations from ` + "`godwit migrate send`" + ` on other hosts and restore them here.
Only peers whose client certificate the CA signed are accepted. Each migration gets its
own directory under --images-dir, removed when it ends. /metrics (Prometheus: see
deploy/grafana for a dashboard) and /healthz are served on --metrics-address; the
history of migrations only over mutual TLS (` + "`godwit migrate history`" + `). A migration
may write at most --max-migration-bytes of pages (default: three times the memory its
source announces, plus 256 MiB); the source stops its pre-copy rounds while its final
dump still fits.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.ImagesDir == "" {
				return &usageError{cmd, errors.New("agent needs --images-dir")}
			}
			if port < 0 || port > 65535 {
				return &usageError{cmd, fmt.Errorf("bad --port %d", port)}
			}
			if a.o.Daemon {
				pid, err := daemon.Start(a.args)
				if err != nil {
					return err
				}
				return a.writePidfile(pid)
			}
			cfg.Log = a.log
			cfg.NetworkLock = netlock.Method(a.o.NetworkLock)
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			m, err := migrate.NewMetrics(reg)
			if err != nil {
				return fmt.Errorf("agent: metrics: %w", err)
			}
			cfg.Metrics = m
			ag, err := migrate.NewAgent(cfg)
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Address, strconv.Itoa(port)))
			if err != nil {
				return fmt.Errorf("agent: %w", err)
			}
			defer ln.Close()
			if port == 0 {
				fmt.Fprintf(a.stdout, "Port: %d\n", ln.Addr().(*net.TCPAddr).Port)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if metricsAddr != "" {
				ml, err := net.Listen("tcp", metricsAddr)
				if err != nil {
					return fmt.Errorf("agent: metrics: %w", err)
				}
				mux := ag.Handler()
				mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
				srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
				go func() {
					if err := srv.Serve(ml); err != nil && !errors.Is(err, http.ErrServerClosed) {
						a.log.Errorf("agent: metrics on %s: %v", metricsAddr, err)
					}
				}()
				defer srv.Close()
			}
			if err := a.writePidfile(os.Getpid()); err != nil {
				return err
			}
			if err := daemon.Ready(a.o.StatusFD); err != nil {
				return err
			}
			a.log.Infof("agent on %s, images in %s", ln.Addr(), cfg.ImagesDir)
			return ag.Serve(ctx, ln)
		},
	}
	f := c.Flags()
	daemonFlags(f, a.o)
	f.StringVar(&cfg.Address, "address", "", "listen on `address` (default: every address)")
	f.IntVar(&port, "port", migrate.DefaultPort, "listen on `port` (0: any, printed)")
	f.StringVar(&cfg.ImagesDir, "images-dir", "", "`dir` holding one directory per migration in flight")
	f.StringVar(&cfg.TLS.CACert, "tls-cacert", "", "CA certificate `file`: only peers it signed are accepted")
	f.StringVar(&cfg.TLS.Cert, "tls-cert", "", "the agent's server certificate `file`")
	f.StringVar(&cfg.TLS.Key, "tls-key", "", "the agent's private key `file`")
	f.StringVar(&cfg.ClientTLS.Cert, "tls-client-cert", "", "this host's client certificate `file` (post-copy: fetch pages from the source)")
	f.StringVar(&cfg.ClientTLS.Key, "tls-client-key", "", "the client certificate's private key `file`")
	f.StringVar(&metricsAddr, "metrics-address", "", "serve /metrics (Prometheus) and /healthz on `host:port`")
	f.IntVar(&cfg.History, "history", 100, "keep the last `n` migrations (godwit migrate history)")
	f.Int64Var(&cfg.MaxMigrationBytes, "max-migration-bytes", 0, "refuse a migration whose rounds send more than `n` bytes of pages (0: three times the memory the source announces, plus 256 MiB)")
	f.IntVar(&cfg.MaxConcurrent, "max-concurrent", 4, "at most `n` migrations at once")
	networkLockFlag(f, a.o)
	f.StringSliceVar(&cfg.AdminCNs, "admin-cn", nil, "certificate common or DNS `name` (CA-signed) that may resolve any held migration and read the whole history; others only the migrations their own certificate started (repeatable)")
	return c
}
