package main

import (
	"context"
	"errors"
	"fmt"
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
a remote lazy-pages daemon. CRIU's protocol over TCP by default; --transport quic carries
the same framing over QUIC with mutual TLS. --port 0 picks a free port and prints it.`,
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
	ln, err := pageserver.Listen(net.JoinHostPort(o.Address, strconv.Itoa(o.Port)), pageserver.TransportOptionsFrom(o))
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
		Log:           a.log,
		Metrics:       metrics,
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

func certsCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "certs DIR HOST...",
		Short: "Make a development CA and host certificates for --tls and --transport quic",
		Long: `Make DIR/cacert.pem and DIR/cakey.pem (a self-signed CA, kept if it exists) and, for
each HOST (a name or an IP address), DIR/HOST/cert.pem and DIR/HOST/key.pem signed by it.
Give a host --tls-cacert DIR/cacert.pem --tls-cert DIR/HOST/cert.pem --tls-key DIR/HOST/key.pem.
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
				out := filepath.Join(dir, h)
				if err := os.MkdirAll(out, 0o700); err != nil {
					return err
				}
				cert, _, err := pageserver.GenerateHostCert(caCert, caKey, out, h)
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, cert)
			}
			return nil
		},
	}
}
