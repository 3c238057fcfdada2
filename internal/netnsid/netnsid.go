// Package netnsid names network namespaces by their nsfs identity
// (device and inode of /proc/PID/ns/net) and keeps the dump's record of
// the tree's network namespace (RecordFile), which the restore checks:
// a tree that had a namespace of its own must not come back in godwit's.
package netnsid

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// ID is a network namespace: the device and inode of its nsfs file.
type ID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

func (id ID) String() string { return "net:[" + strconv.FormatUint(id.Ino, 10) + "]" }

// Of is the namespace of the nsfs file at path (/proc/PID/ns/net,
// /run/netns/NAME).
func Of(path string) (ID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ID{}, fmt.Errorf("network namespace: %w", err)
	}
	return ID{Dev: st.Dev, Ino: st.Ino}, nil
}

// Self is godwit's own network namespace: the calling thread's. Not
// the main thread's (/proc/self): a goroutine that setns'd on a locked
// thread and ended can leave that one wedged in another namespace, while
// a thread that runs unlocked goroutines is always in godwit's.
func Self() (ID, error) { return Of("/proc/thread-self/ns/net") }

// OfTask is task pid's network namespace.
func OfTask(pid int) (ID, error) { return Of("/proc/" + strconv.Itoa(pid) + "/ns/net") }

// Find opens a file of namespace id that is still reachable on this
// host: a /run/netns entry (ip-netns(8)) or a task living in it; nil
// when none is (the namespace is gone, or held only by descriptors or
// mounts elsewhere). path names it for messages.
func Find(id ID) (f *os.File, path string, err error) {
	var cands []string
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			cands = append(cands, filepath.Join("/run/netns", e.Name()))
		}
	}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				cands = append(cands, "/proc/"+e.Name()+"/ns/net")
			}
		}
	}
	for _, p := range cands {
		f, err := os.Open(p)
		if err != nil {
			continue // gone meanwhile, or not an nsfs file we may open
		}
		var st unix.Stat_t
		// Checked on the open file: a PID reused between stat and
		// open must not hand over another namespace.
		if unix.Fstat(int(f.Fd()), &st) == nil && st.Dev == id.Dev && st.Ino == id.Ino {
			return f, p, nil
		}
		f.Close()
	}
	return nil, "", nil
}

// Record is the dump's record of a tree in a network namespace other
// than godwit's (RecordFile): godwit does not dump a namespace's
// devices, addresses or routes, so the restore must be told where the
// tree goes.
type Record struct {
	Tree   ID `json:"tree"`   // the tree's namespace
	Godwit ID `json:"godwit"` // the dumping godwit's
}

// RecordFile is the godwit image that holds a Record; a CRIU image set
// has none and restores as before.
const RecordFile = "godwit-netns.json"

// ParseRecord reads a RecordFile's contents.
func ParseRecord(b []byte) (Record, error) {
	var r Record
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("%s: %w", RecordFile, err)
	}
	if r.Tree.Ino == 0 || r.Godwit.Ino == 0 || r.Tree == r.Godwit {
		return Record{}, fmt.Errorf("%s: bad record %+v", RecordFile, r)
	}
	return r, nil
}

// Marshal is the RecordFile's contents.
func (r Record) Marshal() []byte {
	b, _ := json.Marshal(r) // two structs of integers: cannot fail
	return append(b, '\n')
}

// Check refuses a restore of the tree into namespace cur when cur is
// the dumping godwit's namespace (the tree would lose its own), or,
// on another host, the namespace of init there (here is whose PID 1's
// namespace), unless that is the tree's own. Inodes alone decide for
// the dumping godwit's: the devices of nsfs need not be the same on two
// hosts, while the initial namespace has the same inode on all.
func (r Record) Check(cur, init ID) error {
	if cur == r.Tree {
		return nil
	}
	if cur.Ino == r.Godwit.Ino || cur == init {
		return fmt.Errorf("the tree was dumped in a network namespace of its own (%s, not godwit's %s), and this restore runs in godwit's %s: give --join-ns net:PID|NS_FILE (or run godwit in the namespace the tree goes to)", r.Tree, r.Godwit, cur)
	}
	return nil
}
