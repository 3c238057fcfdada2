package migrate

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"godwit/pageserver"
)

// TLSFiles are the PEM files of one end: the CA that signs the peers, and
// this end's certificate and key (`godwit certs` makes development ones:
// the agent uses a server certificate, `migrate send` a client one).
type TLSFiles struct {
	CACert, Cert, Key string
}

func (f TLSFiles) load() (*x509.CertPool, tls.Certificate, error) {
	if f.CACert == "" || f.Cert == "" || f.Key == "" {
		return nil, tls.Certificate{}, errors.New("mutual TLS needs --tls-cacert, --tls-cert and --tls-key")
	}
	pem, err := os.ReadFile(f.CACert)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, tls.Certificate{}, fmt.Errorf("%s holds no PEM certificate", f.CACert)
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("certificate/key: %w", err)
	}
	return pool, cert, nil
}

// serverConfig requires and verifies a client certificate signed by the CA.
func (f TLSFiles) serverConfig() (*tls.Config, error) {
	pool, cert, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}, nil
}

// clientConfig verifies the agent's certificate against the CA and name.
func (f TLSFiles) clientConfig(serverName string) (*tls.Config, error) {
	pool, cert, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool,
		ServerName: serverName, MinVersion: tls.VersionTLS13}, nil
}

// pageTransport is how page streams travel: the page server's TLS over
// TCP or QUIC, both with mutual TLS from the same files.
func (f TLSFiles) pageTransport(transport, serverName string) (pageserver.TransportOptions, error) {
	o := pageserver.TransportOptions{TLS: true, CACert: f.CACert, Cert: f.Cert, Key: f.Key, ServerName: serverName}
	switch transport {
	case "", "tls":
		o.Transport = pageserver.TransportTCP
	case "quic":
		o.Transport = pageserver.TransportQUIC
	default:
		return o, fmt.Errorf("unknown transport %q (want tls or quic)", transport)
	}
	return o, nil
}
