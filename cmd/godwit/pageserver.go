package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"godwit/internal/daemon"
	"godwit/pageserver"
)

func pageServerCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "page-server [--address A] [--port P] [-D DIR]",
		Short: "Receive pages from dump and pre-dump over the network (or serve them to lazy-pages)",
		Long: `Receive pages from dump and pre-dump over the network, writing pagemap and pages
images into -D as a local dump would; with --lazy-pages, serve a finished dump's pages to
a remote lazy-pages daemon, until it has them all. CRIU's protocol over TCP by default, with TLS 1.3 and a
required client certificate under --tls (CRIU's option set; --tls-allowed-client NAME admits
only the named clients); --transport quic carries the same framing over QUIC with the same
mutual TLS. Without TLS the server listens on 127.0.0.1 unless --address is given;
--lazy-pages without --tls or --transport quic serves plain TCP as CRIU does, with a warning:
any peer that reaches the address, local users included, can read the dumped memory. Images are 0600, never replaced (an OPEN of an
existing pagemap is refused); --max-bytes and --max-files bound what all sessions write.
--port 0 picks a free port and prints it.`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			if a.o.Daemon {
				pid, err := daemon.Start(a.args)
				if err != nil {
					return err
				}
				return a.writePidfile(pid)
			}
			return runPageServer(a)
		},
	}
	pageServerFlags(c.Flags(), a.o)
	return c
}

func runPageServer(a *app) error {
	o := a.o
	if o.PsSocket >= 0 {
		return runSocketPageServer(a)
	}
	to := pageserver.TransportOptionsFrom(o)
	addr := o.Address
	if addr == "" && !to.TLS && o.Transport != string(pageserver.TransportQUIC) {
		// Unauthenticated: only this host unless --address says otherwise.
		addr = "127.0.0.1"
	}
	ln, err := pageserver.Listen(net.JoinHostPort(addr, strconv.Itoa(o.Port)), to)
	if err != nil {
		return err
	}
	defer ln.Close()
	if o.Port == 0 {
		// The caller asked for any port: tell it which (before Ready, while
		// a daemon still has its caller's stdout).
		fmt.Fprintf(a.stdout, "Port: %d\n", ln.Port())
	}
	reg := prometheus.NewRegistry()
	metrics, err := pageserver.NewMetrics(reg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if o.MetricsAddress != "" {
		ml, err := net.Listen("tcp", o.MetricsAddress)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", pageserver.MetricsHandler(reg))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
		go func() {
			if err := srv.Serve(ml); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Errorf("metrics on %s: %v", o.MetricsAddress, err)
			}
		}()
		defer srv.Close()
	}
	srv, err := pageserver.NewServer(pageserver.Config{
		ImagesDir:     o.ImagesDir,
		PrevImagesDir: o.PrevImages,
		Lazy:          o.LazyPages,
		// As CRIU's: done once the lazy-pages daemon has every page.
		LazyExitOnClose: o.LazyPages,
		Log:             a.log,
		Metrics:         metrics,
		MaxBytes:        int64(min(o.MaxBytes, math.MaxInt64)),
		MaxFiles:        o.MaxFiles,
		Once:            o.SingleSession,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	if err := a.writePidfile(os.Getpid()); err != nil {
		return err
	}
	if err := daemon.Ready(o.StatusFD); err != nil {
		return err
	}
	a.log.Infof("page server on %s (%s), images in %s", ln.Addr(), ln.Transport(), o.ImagesDir)
	return srv.Serve(ctx, ln)
}

// runSocketPageServer serves one session on the connection --ps-socket
// hands over (CRIU's page server does the same: no listener, no port).
func runSocketPageServer(a *app) error {
	o := a.o
	conn, err := pageserver.SocketConn(o.PsSocket)
	if err != nil {
		return err
	}
	srv, err := pageserver.NewServer(pageserver.Config{
		ImagesDir:     o.ImagesDir,
		PrevImagesDir: o.PrevImages,
		Log:           a.log,
		MaxBytes:      int64(min(o.MaxBytes, math.MaxInt64)),
		MaxFiles:      o.MaxFiles,
		Once:          true,
	})
	if err != nil {
		conn.Close()
		return err
	}
	defer srv.Close()
	if err := a.writePidfile(os.Getpid()); err != nil {
		conn.Close()
		return err
	}
	if err := daemon.Ready(o.StatusFD); err != nil {
		conn.Close()
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	a.log.Infof("page server on the handed-over socket %d, images in %s", o.PsSocket, o.ImagesDir)
	return srv.ServeConn(ctx, conn)
}

func certsCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "certs DIR HOST...",
		Short: "Make a development CA and server and client certificates for --tls and --transport quic",
		Long: `Make DIR/cacert.pem and DIR/cakey.pem (a self-signed CA, kept if it exists) and, for
each HOST (a name or an IP address), two certificates signed by it: DIR/HOST/server/
(cert.pem, key.pem; valid only for a page server at HOST) and DIR/HOST/client/ (valid only
for a client that --tls-allowed-client HOST admits). Keys are 0600, directories 0700.
A page server takes --tls-cacert DIR/cacert.pem --tls-cert DIR/HOST/server/cert.pem
--tls-key DIR/HOST/server/key.pem; a dumping host the same with client/.
For production, use certificates from your own PKI.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return &usageError{cmd, errors.New("certs needs a directory and at least one host")}
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			dir := args[0]
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			caCert := filepath.Join(dir, pageserver.CACertFile)
			caKey := filepath.Join(dir, pageserver.CAKeyFile)
			if _, err := os.Stat(caCert); errors.Is(err, os.ErrNotExist) {
				if _, _, err := pageserver.GenerateDevCA(dir); err != nil {
					return err
				}
			}
			for _, h := range args[1:] {
				sd, cd, err := pageserver.GenerateHostCerts(caCert, caKey, dir, h)
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, sd)
				fmt.Fprintln(a.stdout, cd)
			}
			return nil
		},
	}
}
