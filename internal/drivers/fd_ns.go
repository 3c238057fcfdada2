package drivers

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"godwit/internal/model"
	"godwit/internal/procfs"
)

// Namespace fds (an open /proc/PID/ns/* link): godwit restores a tree
// into the namespaces it runs in, so an fd of one of the task's own
// namespaces is opened again on the task's own (/proc/self/ns/LINK, by
// an injected openat); one of any other namespace is refused by name.

func init() { registerFDKind(nsKind{}) }

// nsLinks are the /proc/PID/ns links and the namespace type (clone flag)
// of each, in the order a link is looked for (the plain name first).
var nsLinks = []struct {
	link string
	flag uint32
}{
	{"cgroup", unix.CLONE_NEWCGROUP}, {"ipc", unix.CLONE_NEWIPC}, {"mnt", unix.CLONE_NEWNS},
	{"net", unix.CLONE_NEWNET}, {"pid", unix.CLONE_NEWPID}, {"pid_for_children", unix.CLONE_NEWPID},
	{"time", unix.CLONE_NEWTIME}, {"time_for_children", unix.CLONE_NEWTIME},
	{"user", unix.CLONE_NEWUSER}, {"uts", unix.CLONE_NEWUTS},
}

// NsFlag is the clone flag of namespace link name, 0 if none.
func NsFlag(link string) uint32 {
	for _, l := range nsLinks {
		if l.link == link {
			return l.flag
		}
	}
	return 0
}

type nsKind struct{}

func (nsKind) name() string             { return "namespace" }
func (nsKind) fileKind() model.FileKind { return model.Namespace }

// match: /proc shows a namespace fd as TYPE:[INO] (net:[4026531840]).
func (nsKind) match(target string, _ *unix.Stat_t) bool {
	typ, _, ok := strings.Cut(target, ":[")
	return ok && NsFlag(typ) != 0 && !strings.HasSuffix(typ, "_for_children")
}
func (nsKind) check(int, int, uint64) error { return nil }

func (nsKind) collect(_ *Files, pid int, fd *FD, f *model.File) error {
	typ, _, _ := strings.Cut(fd.Path, ":[")
	var st unix.Stat_t
	if err := unix.Stat(procfs.Path(pid, "ns/"+typ), &st); err != nil {
		return fmt.Errorf("stat the task's %s namespace: %w", typ, err)
	}
	if st.Dev != fd.Stat.Dev || st.Ino != fd.Stat.Ino {
		// Another task's, or the one the task's children get after an
		// unshare (pid_for_children, time_for_children).
		return fmt.Errorf("a %s namespace that is not the task's own: not supported (godwit restores into its own namespaces)", typ)
	}
	f.Kind, f.Path = model.Namespace, ""
	f.NS = &model.NamespaceState{Link: typ, Ino: st.Ino}
	return nil
}

func (nsKind) open(rs *restoreFDs, what string, f *model.File) (uint64, error) {
	if f.NS == nil || NsFlag(f.NS.Link) == 0 {
		return 0, fmt.Errorf("%s: namespace fd without its state", what)
	}
	flags := int(f.Flags) & unix.O_ACCMODE
	return rs.s.Openat(what, "/proc/self/ns/"+f.NS.Link, flags)
}
