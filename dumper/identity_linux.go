package dumper

import (
	"os"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"godwit/internal/buildid"
)

// recordIdentity stores what restore checks a reopened regular file
// against: its size and, for ELF files, its build-id. As CRIU does, a file
// open write-only for appending (a log) has no size recorded: the program
// only ever adds at its end, so a log that grew after a dump with -R
// restores consistently.
func recordIdentity(r *regfile.RegFileEntry, path string, flags uint32, st *unix.Stat_t) {
	if !(flags&unix.O_ACCMODE == unix.O_WRONLY && flags&unix.O_APPEND != 0) {
		r.Size = proto.Uint64(uint64(st.Size))
	}
	if id := fileBuildID(path, st); id != nil {
		r.BuildId = buildid.Words(id)
	}
}

// fileBuildID reads the build-id of the file at path if it is still the
// file st describes (same device and inode); nil otherwise or without one.
func fileBuildID(path string, st *unix.Stat_t) []byte {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	var now unix.Stat_t
	if unix.Fstat(int(f.Fd()), &now) != nil || now.Dev != st.Dev || now.Ino != st.Ino {
		return nil
	}
	id, err := buildid.Read(f)
	if err != nil {
		return nil
	}
	return id
}
