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
	// CRIU's --tls-cacert, --tls-cert, --tls-key: PEM files; empty means
	// CRIU's defaults (DefaultCACert, DefaultCert, DefaultKey). The CA
	// verifies the peer; the server requires and verifies a client
	// certificate signed by it.
	CACert, Cert, Key string
	// CACRL is CRIU's --tls-cacrl: a CRL (PEM or DER) signed by the CA;
	// certificates it revokes are refused on both ends.
	CACRL string
	// NoCNVerify skips the check of the server's name against its
	// certificate (CRIU's --tls-no-cn-verify); the chain is still verified.
	NoCNVerify bool
	// ServerName the client expects in the server's certificate; default
	// the host part of the address.
	ServerName string
	// AllowedClients (server only, --tls-allowed-client) restricts clients
	// to certificates naming one of these identities (common name or DNS
	// name); empty admits any client certificate the CA signed.
	AllowedClients []string
	// TLSConfig, when set, is used instead of the files above. It is held
	// to TLS 1.3, and a server config must carry ClientCAs: client
	// certificates are always required and verified.
	TLSConfig *tls.Config
	// Streams (client only), when over 1, stripes the pages over that
	// many connections (at most MaxStreams), each with its own TLS or
	// QUIC connection: one connection's encryption runs on one core.
	// Only godwit's page server takes striped uploads (stripe.go); GET
	// is refused.
	Streams int
	// Compress ("" or CompressZstd; both ends alike) compresses every
	// stream both ways (compress.go): godwit's own, no CRIU peer speaks it.
	Compress string
	// Dedup (client only; godwit's page server only) sends all-zero pages
	// and pages identical to one sent before in the same pages file as
	// short ZERO and COPY records instead of their data (dedup.go), for
	// the pages the caller hands over in memory; striped too (ZERO_AT,
	// COPY_AT).
	Dedup bool
	// ZeroOnly (with Dedup) skips the duplicate test: only all-zero pages
	// go as records. The test hashes every page (SHA-256, about 1.6 GB/s
	// on one core here), which costs more than it saves on a link faster
	// than that, and inside a freeze.
	ZeroOnly bool
	// QUIC tuning; nil means the defaults of quicConfig.
	QUIC *quic.Config
}

// CRIU's default certificate locations (criu(8), --tls-cacert etc.).
const (
	DefaultCACert = "/etc/pki/CA/cacert.pem"
	DefaultCert   = "/etc/pki/criu/cert.pem"
	DefaultKey    = "/etc/pki/criu/private/key.pem"
)

func (o TransportOptions) transport() (Transport, error) {
	if err := checkCompress(o.Compress); err != nil {
		return "", err
	}
	switch o.Transport {
	case "", TransportTCP:
		return TransportTCP, nil
	case TransportQUIC:
		return TransportQUIC, nil
	}
	return "", fmt.Errorf("page server: unknown transport %q (want tcp or quic)", o.Transport)
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// tlsConfig builds the TLS configuration of one end from the files.
// TLS 1.3 is the minimum: GnuTLS >= 3.6.5 (CRIU's TLS library) speaks it
// with its default priorities.
func (o TransportOptions) tlsConfig(server bool, host string) (*tls.Config, error) {
	var c *tls.Config
	var crl *x509.RevocationList
	if o.TLSConfig != nil {
		c = o.TLSConfig.Clone()
		if server && c.ClientCAs == nil {
			return nil, errors.New("page server: TLS config without ClientCAs: client certificates are required")
		}
		if c.GetConfigForClient != nil {
			return nil, errors.New("page server: TLS config with GetConfigForClient is not supported (the server verifies clients itself)")
		}
	} else {
		caFile := orDefault(o.CACert, DefaultCACert)
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("page server: CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("page server: %s holds no PEM certificate", caFile)
		}
		cert, err := tls.LoadX509KeyPair(orDefault(o.Cert, DefaultCert), orDefault(o.Key, DefaultKey))
		if err != nil {
			return nil, fmt.Errorf("page server: certificate/key: %w", err)
		}
		c = &tls.Config{Certificates: []tls.Certificate{cert}}
		if server {
			c.ClientCAs = pool
		} else {
			c.RootCAs = pool
		}
		if o.CACRL != "" {
			if crl, err = loadCRL(o.CACRL, pem); err != nil {
				return nil, err
			}
		}
	}
	c.MinVersion = max(c.MinVersion, tls.VersionTLS13)
	if server {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.VerifyPeerCertificate = chainChecks(c.VerifyPeerCertificate, crl, o.AllowedClients)
	} else {
		if c.ServerName == "" {
			c.ServerName = o.ServerName
		}
		if c.ServerName == "" {
			c.ServerName = host
		}
		if o.NoCNVerify {
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
		if crl != nil {
			c.VerifyPeerCertificate = chainChecks(c.VerifyPeerCertificate, crl, nil)
		}
	}
	if t, _ := o.transport(); t == TransportQUIC {
		c.NextProtos = []string{alpn}
	}
	return c, nil
}

// quicConfig is quic-go's configuration for page traffic. Receive windows
// are bounded so that MaxConns connections stay within Config.MemoryBound.
// The server sends no keep-alives: an idle peer must time out (its own
// PINGs don't help it either: see serveQUIC's idle timer).
func (o TransportOptions) quicConfig(server bool) *quic.Config {
	if o.QUIC != nil {
		c := o.QUIC.Clone()
		if server {
			c.KeepAlivePeriod = 0
			if c.HandshakeIdleTimeout <= 0 || c.HandshakeIdleTimeout > defaultHandshakeTimeout {
				c.HandshakeIdleTimeout = defaultHandshakeTimeout
			}
			if c.MaxConnectionReceiveWindow == 0 || c.MaxConnectionReceiveWindow > quicConnWindow {
				c.MaxConnectionReceiveWindow = quicConnWindow
			}
			c.MaxStreamReceiveWindow = min(max(c.MaxStreamReceiveWindow, 1), c.MaxConnectionReceiveWindow)
			c.InitialConnectionReceiveWindow = min(c.InitialConnectionReceiveWindow, c.MaxConnectionReceiveWindow)
			c.InitialStreamReceiveWindow = min(c.InitialStreamReceiveWindow, c.MaxStreamReceiveWindow)
			if c.MaxIncomingStreams <= 0 || c.MaxIncomingStreams > maxStreamsPerConn {
				c.MaxIncomingStreams = maxStreamsPerConn
			}
			c.MaxIncomingUniStreams = -1
			o.capZstdStreams(c)
		}
		return c
	}
	c := &quic.Config{
		InitialStreamReceiveWindow:     1 << 20,
		MaxStreamReceiveWindow:         quicConnWindow,
		InitialConnectionReceiveWindow: 2 << 20,
		MaxConnectionReceiveWindow:     quicConnWindow,
		MaxIncomingStreams:             maxStreamsPerConn,
		MaxIncomingUniStreams:          -1,
		MaxIdleTimeout:                 60 * time.Second,
		// quic-go hands connections over once their handshake is done:
		// an unfinished one holds no MaxConns slot, only this long.
		HandshakeIdleTimeout: defaultHandshakeTimeout,
	}
	if !server {
		c.KeepAlivePeriod = 15 * time.Second
	} else {
		o.capZstdStreams(c)
	}
	return c
}

// capZstdStreams bounds a compressing server's concurrent streams.
func (o TransportOptions) capZstdStreams(c *quic.Config) {
	if o.Compress != "" {
		c.MaxIncomingStreams = min(c.MaxIncomingStreams, maxZstdStreamsPerConn)
	}
}

// quicConnWindow bounds one QUIC connection's receive buffers (flow
// control window): enough for loopback and LAN bandwidth-delay products.
const quicConnWindow = 4 << 20

// maxStreamsPerConn bounds the concurrent task streams of one QUIC peer.
const maxStreamsPerConn = 16

// Listener accepts page-server connections over TCP (optionally TLS) or QUIC.
type Listener struct {
	transport Transport
	tcp       net.Listener
	tlsConf   *tls.Config // TCP+TLS
	quic      *quic.Listener
	udp       net.PacketConn
	compress  bool // every stream is zstd (TransportOptions.Compress)
	// onRefuse reports a refused client certificate (set by Serve).
	onRefuse atomic.Pointer[func(peer string, err error)]
}

// Listen listens on addr ("host:port"; port 0 picks a free port, see Addr).
func Listen(addr string, o TransportOptions) (*Listener, error) {
	t, err := o.transport()
	if err != nil {
		return nil, err
	}
	l := &Listener{transport: t, compress: o.Compress != ""}
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
		if l.quic, err = quic.Listen(l.udp, l.serverTLS(tc), o.quicConfig(true)); err != nil {
			l.udp.Close()
			return nil, fmt.Errorf("page server: quic listen: %w", err)
		}
	}
	return l, nil
}

// NewTCPListener serves on an existing listener (an inherited socket, as
// CRIU's --ps-socket), with TLS when o.TLS is set.
func NewTCPListener(ln net.Listener, o TransportOptions) (*Listener, error) {
	if err := checkCompress(o.Compress); err != nil {
		return nil, err
	}
	l := &Listener{transport: TransportTCP, tcp: ln, compress: o.Compress != ""}
	if o.TLS {
		tc, err := o.tlsConfig(true, "")
		if err != nil {
			return nil, err
		}
		l.tlsConf = l.serverTLS(tc)
	}
	return l, nil
}

// Authenticated reports whether peers must present a certificate.
func (l *Listener) Authenticated() bool { return l.quic != nil || l.tlsConf != nil }

// serverTLS makes the server verify client certificates itself, so that a
// refused client is logged: crypto/tls and quic-go refuse silently.
func (l *Listener) serverTLS(base *tls.Config) *tls.Config {
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
	qc, err := quic.DialAddr(ctx, addr, conf, o.quicConfig(false))
	if err != nil {
		return nil, fmt.Errorf("page server: quic dial %s: %w", addr, err)
	}
	return qc, nil
}

// TransportOptionsFrom maps criu(8)'s TLS options and godwit's --transport.
func TransportOptionsFrom(o *opts.Options) TransportOptions {
	return TransportOptions{
		Transport:      Transport(o.Transport),
		TLS:            o.TLS,
		CACert:         o.TLSCACert,
		Cert:           o.TLSCert,
		Key:            o.TLSKey,
		CACRL:          o.TLSCACRL,
		NoCNVerify:     o.TLSNoCNVerify,
		AllowedClients: o.TLSAllowedClients,
	}
}
