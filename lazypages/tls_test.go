package lazypages

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"godwit/pageserver"
)

// certs makes a CA and server and client certificates for 127.0.0.1 in a
// temporary directory and returns the server's and the client's options.
func certs(t testing.TB, transport pageserver.Transport) (server, client pageserver.TransportOptions, dir string) {
	t.Helper()
	dir = t.TempDir()
	ca, cakey, err := pageserver.GenerateDevCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	sd, cd, err := pageserver.GenerateHostCerts(ca, cakey, dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	tlsOn := transport != pageserver.TransportQUIC
	server = pageserver.TransportOptions{Transport: transport, TLS: tlsOn, CACert: ca,
		Cert: filepath.Join(sd, pageserver.CertFile), Key: filepath.Join(sd, pageserver.KeyFile)}
	client = server
	client.Cert, client.Key = filepath.Join(cd, pageserver.CertFile), filepath.Join(cd, pageserver.KeyFile)
	return server, client, dir
}

// clientTLS gives the client options certs made in dir (for a daemon in
// another process).
func clientTLS(dir string, transport pageserver.Transport) pageserver.TransportOptions {
	cd := filepath.Join(dir, "127.0.0.1", string(pageserver.RoleClient))
	return pageserver.TransportOptions{Transport: transport, TLS: transport != pageserver.TransportQUIC,
		CACert: filepath.Join(dir, pageserver.CACertFile),
		Cert:   filepath.Join(cd, pageserver.CertFile), Key: filepath.Join(cd, pageserver.KeyFile)}
}

// startPageServer serves dir's pages for lazy-pages (exiting once the
// daemon has them all) and returns its address and its end.
func startPageServer(t testing.TB, dir string, o pageserver.TransportOptions) (string, chan error, context.CancelFunc) {
	t.Helper()
	ln, err := pageserver.Listen("127.0.0.1:0", o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	stopped := make(chan struct{})
	go func() {
		done <- pageserver.Serve(ctx, ln, pageserver.Config{ImagesDir: dir, Lazy: true, LazyExitOnClose: true})
		ln.Close()
		close(stopped)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			t.Error("page server did not stop")
		}
	})
	return ln.Addr().String(), done, cancel
}

func tlsConfs(t testing.TB, so, co pageserver.TransportOptions) (*tls.Config, *tls.Config) {
	t.Helper()
	sc, err := tlsFromFiles(so, true)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := tlsFromFiles(co, false)
	if err != nil {
		t.Fatal(err)
	}
	return sc, cc
}

func tlsFromFiles(o pageserver.TransportOptions, server bool) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(o.Cert, o.Key)
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(o.CACert)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	if server {
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	} else {
		c.RootCAs, c.ServerName = pool, "127.0.0.1"
	}
	return c, nil
}

func tlsListen(c *tls.Config) (net.Listener, error) { return tls.Listen("tcp", "127.0.0.1:0", c) }

func tlsDial(addr string, c *tls.Config) (net.Conn, error) { return tls.Dial("tcp", addr, c) }
