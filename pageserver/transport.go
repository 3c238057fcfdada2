package pageserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"godwit/internal/opts"
)

// Transport selects how requests travel.
type Transport string

const (
	// TransportTCP is CRIU's page-server transport (the default).
	TransportTCP Transport = "tcp"
	// TransportQUIC carries the same framing on QUIC streams, always with
	// mutual TLS: a control stream, and one stream per task's pages.
	TransportQUIC Transport = "quic"
)

// alpn names the protocol on QUIC connections.
const alpn = "godwit-page-server/1"

// TransportOptions describe the connection, on both ends.
type TransportOptions struct {
	Transport Transport // "" means TCP

	// TLS over TCP (CRIU's --tls). QUIC always uses TLS.
	TLS bool
	// CRIU's --tls-cacert, --tls-cert, --tls-key: PEM files. The CA
	// verifies the peer; the server requires and verifies a client
	// certificate signed by it.
	CACert, Cert, Key string
	// NoCNVerify skips the check of the server's name against its
	// certificate (CRIU's --tls-no-cn-verify); the chain is still verified.
	NoCNVerify bool
	// ServerName the client expects in the server's certificate; default
	// the host part of the address.
	ServerName string
	// TLSConfig, when set, is used instead of the files above.
	TLSConfig *tls.Config
	// QUIC tuning; nil means the defaults of quicConfig.
	QUIC *quic.Config
}

func (o TransportOptions) transport() (Transport, error) {
	switch o.Transport {
	case "", TransportTCP:
		return TransportTCP, nil
	case TransportQUIC:
		return TransportQUIC, nil
	}
	return "", fmt.Errorf("page server: unknown transport %q (want tcp or quic)", o.Transport)
}

// tlsConfig builds the TLS configuration of one end from the files.
func (o TransportOptions) tlsConfig(server bool, host string) (*tls.Config, error) {
	var c *tls.Config
	if o.TLSConfig != nil {
		c = o.TLSConfig.Clone()
	} else {
		if o.CACert == "" || o.Cert == "" || o.Key == "" {
			return nil, errors.New("page server: TLS needs a CA certificate, a certificate and a key (--tls-cacert, --tls-cert, --tls-key)")
		}
		pem, err := os.ReadFile(o.CACert)
		if err != nil {
			return nil, fmt.Errorf("page server: CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("page server: %s holds no PEM certificate", o.CACert)
		}
		cert, err := tls.LoadX509KeyPair(o.Cert, o.Key)
		if err != nil {
			return nil, fmt.Errorf("page server: certificate/key: %w", err)
		}
		c = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
		if server {
			c.ClientCAs = pool
			c.ClientAuth = tls.RequireAndVerifyClientCert
		} else {
			c.RootCAs = pool
		}
	}
	if !server {
		if c.ServerName == "" {
			c.ServerName = o.ServerName
		}
		if c.ServerName == "" {
			c.ServerName = host
		}
		if o.NoCNVerify && c.RootCAs != nil {
			// Verify the chain by hand, without the name.
			roots := c.RootCAs
			c.InsecureSkipVerify = true
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("page server: no server certificate")
				}
				inter := x509.NewCertPool()
				for _, ic := range cs.PeerCertificates[1:] {
					inter.AddCert(ic)
				}
				_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
					KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
				return err
			}
		}
	}
	if t, _ := o.transport(); t == TransportQUIC {
		c.NextProtos = []string{alpn}
	}
	return c, nil
}

// quicConfig is quic-go's configuration for page traffic: large flow
// control windows (pages are bulk data), bounded per connection.
func (o TransportOptions) quicConfig() *quic.Config {
	if o.QUIC != nil {
		return o.QUIC.Clone()
	}
	return &quic.Config{
		InitialStreamReceiveWindow:     4 << 20,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 8 << 20,
		MaxConnectionReceiveWindow:     32 << 20,
		MaxIncomingStreams:             maxStreamsPerConn,
		MaxIncomingUniStreams:          -1,
		MaxIdleTimeout:                 60 * time.Second,
		KeepAlivePeriod:                15 * time.Second,
	}
}

// maxStreamsPerConn bounds the concurrent task streams of one QUIC peer.
const maxStreamsPerConn = 16

// Listener accepts page-server connections over TCP (optionally TLS) or QUIC.
type Listener struct {
	transport Transport
	tcp       net.Listener
	tlsConf   *tls.Config // TCP+TLS
	quic      *quic.Listener
	udp       net.PacketConn
	// onRefuse reports a refused client certificate (set by Serve).
	onRefuse atomic.Pointer[func(peer string, err error)]
}

// Listen listens on addr ("host:port"; port 0 picks a free port, see Addr).
func Listen(addr string, o TransportOptions) (*Listener, error) {
	t, err := o.transport()
	if err != nil {
		return nil, err
	}
	l := &Listener{transport: t}
	switch t {
	case TransportTCP:
		if o.TLS {
			tc, err := o.tlsConfig(true, "")
			if err != nil {
				return nil, err
			}
			l.tlsConf = l.serverTLS(tc)
		}
		if l.tcp, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("page server: listen: %w", err)
		}
	case TransportQUIC:
		tc, err := o.tlsConfig(true, "")
		if err != nil {
			return nil, err
		}
		if l.udp, err = net.ListenPacket("udp", addr); err != nil {
			return nil, fmt.Errorf("page server: listen: %w", err)
		}
		if l.quic, err = quic.Listen(l.udp, l.serverTLS(tc), o.quicConfig()); err != nil {
			l.udp.Close()
			return nil, fmt.Errorf("page server: quic listen: %w", err)
		}
	}
	return l, nil
}

// NewTCPListener serves on an existing listener (an inherited socket, as
// CRIU's --ps-socket). tlsConf may be nil for plain TCP.
func NewTCPListener(ln net.Listener, tlsConf *tls.Config) *Listener {
	l := &Listener{transport: TransportTCP, tcp: ln}
	if tlsConf != nil {
		l.tlsConf = l.serverTLS(tlsConf)
	}
	return l
}

// serverTLS makes the server verify client certificates itself, so that a
// refused client is logged: crypto/tls and quic-go refuse silently.
func (l *Listener) serverTLS(base *tls.Config) *tls.Config {
	if base.ClientAuth != tls.RequireAndVerifyClientCert || base.ClientCAs == nil || base.GetConfigForClient != nil {
		return base
	}
	c := base.Clone()
	// Resumed sessions skip VerifyPeerCertificate: with it doing the
	// client check, every handshake must be a full one.
	c.SessionTicketsDisabled = true
	c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		peer := "unknown peer"
		if hello.Conn != nil {
			peer = hello.Conn.RemoteAddr().String()
		}
		cc := base.Clone()
		cc.SessionTicketsDisabled = true
		pool, next := cc.ClientCAs, cc.VerifyPeerCertificate
		cc.ClientAuth = tls.RequireAnyClientCert
		cc.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
			err := verifyClient(raw, pool)
			if err == nil && next != nil {
				err = next(raw, chains)
			}
			if err != nil {
				if f := l.onRefuse.Load(); f != nil {
					(*f)(peer, err)
				}
			}
			return err
		}
		return cc, nil
	}
	return c
}

// Addr is the address listened on, with the chosen port when 0 was asked.
func (l *Listener) Addr() net.Addr {
	if l.quic != nil {
		return l.quic.Addr()
	}
	return l.tcp.Addr()
}

// Port is the port listened on (what CRIU reports for --port 0).
func (l *Listener) Port() int {
	switch a := l.Addr().(type) {
	case *net.TCPAddr:
		return a.Port
	case *net.UDPAddr:
		return a.Port
	}
	return 0
}

// Transport is the listener's transport.
func (l *Listener) Transport() Transport { return l.transport }

// Close stops accepting. Connections being served are not affected.
func (l *Listener) Close() error {
	if l.quic != nil {
		err := l.quic.Close()
		if cerr := l.udp.Close(); err == nil {
			err = cerr
		}
		return err
	}
	return l.tcp.Close()
}

// dialTCP connects, with TLS if asked.
func dialTCP(ctx context.Context, addr string, o TransportOptions) (net.Conn, *net.TCPConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("page server: dial %s: %w", addr, err)
	}
	tc := c.(*net.TCPConn)
	if !o.TLS {
		return c, tc, nil
	}
	host, _, _ := net.SplitHostPort(addr)
	conf, err := o.tlsConfig(false, host)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	tlc := tls.Client(c, conf)
	if err := tlc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("page server: TLS handshake with %s: %w", addr, err)
	}
	return tlc, nil, nil
}

func dialQUIC(ctx context.Context, addr string, o TransportOptions) (*quic.Conn, error) {
	host, _, _ := net.SplitHostPort(addr)
	conf, err := o.tlsConfig(false, host)
	if err != nil {
		return nil, err
	}
	qc, err := quic.DialAddr(ctx, addr, conf, o.quicConfig())
	if err != nil {
		return nil, fmt.Errorf("page server: quic dial %s: %w", addr, err)
	}
	return qc, nil
}

// TransportOptionsFrom maps criu(8)'s TLS options and godwit's --transport.
func TransportOptionsFrom(o *opts.Options) TransportOptions {
	return TransportOptions{
		Transport:  Transport(o.Transport),
		TLS:        o.TLS,
		CACert:     o.TLSCACert,
		Cert:       o.TLSCert,
		Key:        o.TLSKey,
		NoCNVerify: o.TLSNoCNVerify,
	}
}
