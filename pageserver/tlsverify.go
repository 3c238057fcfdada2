package pageserver

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
)

// verifyClient verifies a client's chain against roots, for client use.
func verifyClient(rawCerts [][]byte, roots *x509.CertPool) error {
	certs, err := parseChain(rawCerts)
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err = certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

func parseChain(rawCerts [][]byte) ([]*x509.Certificate, error) {
	if len(rawCerts) == 0 {
		return nil, errors.New("no peer certificate")
	}
	certs := make([]*x509.Certificate, 0, len(rawCerts))
	for _, rc := range rawCerts {
		c, err := x509.ParseCertificate(rc)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// chainChecks adds to a (verified) peer chain the checks crypto/tls does
// not make: revocation by crl and, for clients, the allowed identities.
// next is the configuration's own VerifyPeerCertificate, run last.
func chainChecks(next func([][]byte, [][]*x509.Certificate) error, crl *x509.RevocationList, allowed []string) func([][]byte, [][]*x509.Certificate) error {
	if crl == nil && len(allowed) == 0 {
		return next
	}
	return func(raw [][]byte, chains [][]*x509.Certificate) error {
		certs, err := parseChain(raw)
		if err != nil {
			return err
		}
		if crl != nil {
			for _, c := range certs {
				if err := revoked(crl, c); err != nil {
					return err
				}
			}
		}
		if len(allowed) > 0 && !identityIn(certs[0], allowed) {
			return fmt.Errorf("certificate of %q is not an allowed client (--tls-allowed-client)", certs[0].Subject.CommonName)
		}
		if next != nil {
			return next(raw, chains)
		}
		return nil
	}
}

func revoked(crl *x509.RevocationList, c *x509.Certificate) error {
	if !bytes.Equal(crl.RawIssuer, c.RawIssuer) {
		return nil
	}
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber != nil && e.SerialNumber.Cmp(c.SerialNumber) == 0 {
			return fmt.Errorf("certificate of %q (serial %x) is revoked by the CRL", c.Subject.CommonName, c.SerialNumber)
		}
	}
	return nil
}

// identityIn reports whether the certificate names one of the identities:
// its common name, a DNS name or an IP address.
func identityIn(c *x509.Certificate, names []string) bool {
	ids := append([]string{c.Subject.CommonName}, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		ids = append(ids, ip.String())
	}
	for _, id := range ids {
		if id != "" && slices.Contains(names, id) {
			return true
		}
	}
	return false
}

// loadCRL reads a CRL (PEM or DER) and checks that one of the CA
// certificates in caPEM signed it: a forged CRL must not pass for one.
func loadCRL(path string, caPEM []byte) (*x509.RevocationList, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("page server: CRL: %w", err)
	}
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	crl, err := x509.ParseRevocationList(b)
	if err != nil {
		return nil, fmt.Errorf("page server: CRL %s: %w", path, err)
	}
	for rest := caPEM; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		ca, err := x509.ParseCertificate(blk.Bytes)
		if err == nil && crl.CheckSignatureFrom(ca) == nil {
			return crl, nil
		}
	}
	return nil, fmt.Errorf("page server: CRL %s is not signed by the CA", path)
}

// isLoopback reports whether addr only reaches this host.
func isLoopback(addr net.Addr) bool {
	var ip net.IP
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	default:
		return false
	}
	return ip != nil && ip.IsLoopback()
}
