package netnsid

import (
	"os"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	tree := ID{Dev: 4, Ino: 4026532300}
	godwit := ID{Dev: 4, Ino: 4026531840}
	r := Record{Tree: tree, Godwit: godwit}
	other := ID{Dev: 4, Ino: 4026532400}
	for _, c := range []struct {
		cur, init ID
		ok        bool
	}{
		{tree, godwit, true},                              // back in its own (restored while it still exists)
		{other, godwit, true},                             // --join-ns net:Y
		{godwit, godwit, false},                           // godwit's own
		{ID{Dev: 9, Ino: godwit.Ino}, ID{}, false},        // another host's initial namespace
		{ID{Dev: 9, Ino: 77}, ID{Dev: 9, Ino: 77}, false}, // another host, init's namespace
	} {
		err := r.Check(c.cur, c.init)
		if (err == nil) != c.ok {
			t.Errorf("Check(%v, %v): %v, want ok %v", c.cur, c.init, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--join-ns net:") {
			t.Errorf("Check(%v): %v does not name --join-ns", c.cur, err)
		}
	}
}

func TestParseRecord(t *testing.T) {
	r := Record{Tree: ID{Dev: 4, Ino: 5}, Godwit: ID{Dev: 4, Ino: 6}}
	got, err := ParseRecord(r.Marshal())
	if err != nil || got != r {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for _, bad := range []string{`{"tree":{"dev":4,"ino":5},"godwit":{"dev":4,"ino":5}}`, `{"tree":{"ino":0},"godwit":{"ino":6}}`, `{"x":1}`, `[`} {
		if _, err := ParseRecord([]byte(bad)); err == nil {
			t.Errorf("ParseRecord(%s) accepted", bad)
		}
	}
}

func TestFind(t *testing.T) {
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	f, path, err := Find(self)
	if err != nil || f == nil {
		t.Fatalf("Find(own namespace): %v %v", f, err)
	}
	defer f.Close()
	if got, err := Of(path); err != nil || got != self {
		t.Fatalf("Find gave %s: %v %v, want %v", path, got, err, self)
	}
	if f, _, _ := Find(ID{Dev: self.Dev, Ino: 1}); f != nil {
		f.Close()
		t.Fatal("found a namespace with inode 1")
	}
	if _, err := Of("/nonexistent"); err == nil || os.IsExist(err) {
		t.Fatal("Of(/nonexistent) succeeded")
	}
}
