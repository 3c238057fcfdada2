package migrate

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Who may resolve a held migration and read the agent's history: the
// certificate that started the migration (its owner, by fingerprint), or
// an admin identity the agent was given (AgentConfig.AdminCNs). Any other
// peer the CA signed is refused by name: a CA usually signs every host's
// certificate, and one host must not settle another's migration.

// fingerprint identifies a certificate: the SHA-256 of its DER.
func fingerprint(der []byte) string {
	h := sha256.Sum256(der)
	return hex.EncodeToString(h[:])
}

func peerFingerprint(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	return fingerprint(c.Raw)
}

// peerName names a certificate in errors and logs.
func peerName(c *x509.Certificate) string {
	if c == nil {
		return "a peer without certificate"
	}
	if c.Subject.CommonName != "" {
		return fmt.Sprintf("CN=%q", c.Subject.CommonName)
	}
	return "certificate " + peerFingerprint(c)[:16]
}

// isAdmin reports whether c names one of the admin identities (common
// name or DNS name; the CA verified the chain at the handshake).
func (a *Agent) isAdmin(c *x509.Certificate) bool {
	if c == nil || len(a.cfg.AdminCNs) == 0 {
		return false
	}
	if c.Subject.CommonName != "" && slices.Contains(a.cfg.AdminCNs, c.Subject.CommonName) {
		return true
	}
	for _, n := range c.DNSNames {
		if slices.Contains(a.cfg.AdminCNs, n) {
			return true
		}
	}
	return false
}

// ownerOf is the fingerprint of the certificate that started migration
// id, as the held copy, the states kept, or its resume record say; "" if
// unknown.
func (a *Agent) ownerOf(id string) string {
	a.mu.Lock()
	if h := a.held[id]; h != nil {
		a.mu.Unlock()
		return h.owner
	}
	if o, ok := a.owners[id]; ok {
		a.mu.Unlock()
		return o
	}
	a.mu.Unlock()
	if b, err := os.ReadFile(filepath.Join(a.cfg.ImagesDir, id+resumedSuffix)); err == nil {
		return recordOwner(b)
	}
	return ""
}

// authorize allows peer to resolve migration id: its owner, or an admin.
// A migration this agent knows nothing of has nothing to show: anyone
// learns it is unknown.
func (a *Agent) authorize(peer *x509.Certificate, id string) error {
	if a.isAdmin(peer) {
		return nil
	}
	owner := a.ownerOf(id)
	if owner == "" {
		if st, _ := a.stateOf(id); st == stateUnknown {
			return nil
		}
		return fmt.Errorf("migration %s: its source's certificate is not recorded here: only an admin (agent --admin-cn) may resolve it", id)
	}
	if owner != peerFingerprint(peer) {
		return fmt.Errorf("migration %s was not started by %s: only its source's certificate or an admin (agent --admin-cn) may resolve it", id, peerName(peer))
	}
	return nil
}

// ownerLine is how a resume record names its owner, on the line after
// the record proper.
const ownerLine = "owner "

// recordOwner is the owner a resume record names ("" for records of older
// agents, which only an admin may resolve).
func recordOwner(b []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if o, ok := strings.CutPrefix(sc.Text(), ownerLine); ok && len(o) == 2*sha256.Size {
			return o
		}
	}
	return ""
}

// withOwner appends the owner line to a resume record.
func withOwner(record, owner string) string {
	if owner == "" {
		return record
	}
	return record + ownerLine + owner + "\n"
}
