package lazypages

import (
	"path/filepath"

	"godwit/pageserver"
)

// clientTLS gives the client side of certificates made by makeCerts.
func clientTLS(dir string) pageserver.TransportOptions {
	return pageserver.TransportOptions{TLS: true, CACert: filepath.Join(dir, "ca.pem"),
		Cert: filepath.Join(dir, "client", pageserver.CertFile), Key: filepath.Join(dir, "client", pageserver.KeyFile)}
}
