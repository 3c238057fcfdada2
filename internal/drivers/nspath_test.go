package drivers

import (
	"os"
	"testing"
)

func TestNsRootPaths(t *testing.T) {
	n, err := nsRootOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := n.path("/dev/null"); !ok || p != "/dev/null" {
		t.Errorf("own namespace: /dev/null is %q %v, want itself", p, ok)
	}
	// Another namespace, the task chrooted in /jail there.
	j := nsRoot{dir: "/proc/7/root", strip: "/jail"}
	for _, c := range []struct {
		in, rel, path string
		ok            bool
	}{
		{"/jail/sub/a", "./sub/a", "/proc/7/root/sub/a", true},
		{"/jail", ".", "/proc/7/root", true},
		{"/jailbreak/a", "", "", false},
		{"/etc/passwd", "", "", false},
	} {
		rel, ok := j.rel(c.in)
		p, pok := j.path(c.in)
		if rel != c.rel || ok != c.ok || p != c.path || pok != c.ok {
			t.Errorf("%s: rel %q %v, path %q %v; want %q %q %v", c.in, rel, ok, p, pok, c.rel, c.path, c.ok)
		}
	}
	if p, _ := (nsRoot{dir: "/proc/7/root"}).path("/a/b"); p != "/proc/7/root/a/b" {
		t.Errorf("another namespace, not chrooted: /a/b is %q", p)
	}
}
