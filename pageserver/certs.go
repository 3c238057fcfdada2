package pageserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Development PKI: a CA and host certificates (ECDSA P-256) for tests and
// for users who have no PKI of their own. File names follow CRIU's
// defaults (cacert.pem, cert.pem, key.pem) so that one directory per host
// can be handed to --tls-cacert/--tls-cert/--tls-key.

// CA file names inside a directory made by GenerateDevCA.
const (
	CACertFile = "cacert.pem"
	CAKeyFile  = "cakey.pem"
	CertFile   = "cert.pem"
	KeyFile    = "key.pem"
)

// GenerateDevCA creates dir/cacert.pem and dir/cakey.pem: a self-signed CA
// valid for ten years. Existing files are not overwritten.
func GenerateDevCA(dir string) (certPath, keyPath string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("dev CA: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "godwit development CA", Organization: []string{"godwit"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", fmt.Errorf("dev CA: %w", err)
	}
	certPath, keyPath = filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if err := writePEMs(certPath, der, keyPath, key); err != nil {
		return "", "", fmt.Errorf("dev CA: %w", err)
	}
	return certPath, keyPath, nil
}

// Role is what a certificate may be used for: a page server proves its
// name with a server certificate, a dumping host with a client one. A
// certificate is never both, so a stolen client key cannot impersonate a
// page server and a server's key cannot feed another server pages.
type Role string

const (
	RoleServer Role = "server"
	RoleClient Role = "client"
)

// GenerateCert signs a certificate for hosts (DNS names or IP addresses;
// the first is also the common name, the identity --tls-allowed-client
// matches) with the CA in caCert/caKey, valid for role only, and writes
// outDir/cert.pem and outDir/key.pem (0600; outDir is created 0700).
// Existing files are not overwritten.
func GenerateCert(caCert, caKey, outDir string, role Role, hosts ...string) (certPath, keyPath string, err error) {
	var eku x509.ExtKeyUsage
	switch role {
	case RoleServer:
		eku = x509.ExtKeyUsageServerAuth
	case RoleClient:
		eku = x509.ExtKeyUsageClientAuth
	default:
		return "", "", fmt.Errorf("%s certificate: unknown role", role)
	}
	if len(hosts) == 0 {
		return "", "", fmt.Errorf("%s certificate: no host name", role)
	}
	ca, caPriv, err := loadCA(caCert, caKey)
	if err != nil {
		return "", "", fmt.Errorf("%s certificate: %w", role, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("%s certificate: %w", role, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: hosts[0], Organization: []string{"godwit"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(2, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{eku},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caPriv)
	if err != nil {
		return "", "", fmt.Errorf("%s certificate: %w", role, err)
	}
	certPath, keyPath = filepath.Join(outDir, CertFile), filepath.Join(outDir, KeyFile)
	if err := writePEMs(certPath, der, keyPath, key); err != nil {
		return "", "", fmt.Errorf("%s certificate: %w", role, err)
	}
	return certPath, keyPath, nil
}

// GenerateHostCerts makes one server and one client certificate for a
// host: dir/HOST/server/{cert,key}.pem and dir/HOST/client/{cert,key}.pem.
func GenerateHostCerts(caCert, caKey, dir string, hosts ...string) (serverDir, clientDir string, err error) {
	if len(hosts) == 0 {
		return "", "", errors.New("host certificates: no host name")
	}
	base := filepath.Join(dir, hosts[0])
	serverDir, clientDir = filepath.Join(base, string(RoleServer)), filepath.Join(base, string(RoleClient))
	if _, _, err := GenerateCert(caCert, caKey, serverDir, RoleServer, hosts...); err != nil {
		return "", "", err
	}
	if _, _, err := GenerateCert(caCert, caKey, clientDir, RoleClient, hosts...); err != nil {
		return "", "", err
	}
	return serverDir, clientDir, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

func loadCA(certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	blk, _ := pem.Decode(cb)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("%s: no PEM certificate", certPath)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("%s: not a CA certificate", certPath)
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	blk, _ = pem.Decode(kb)
	if blk == nil {
		return nil, nil, fmt.Errorf("%s: no PEM key", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("%s: not an ECDSA key", keyPath)
	}
	return cert, ek, nil
}

func writePEMs(certPath string, der []byte, keyPath string, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(certPath), 0o700); err != nil {
		return err
	}
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	if err := writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		os.Remove(keyPath)
		return err
	}
	return nil
}

func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}
