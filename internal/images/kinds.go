package images

import (
	"fmt"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/apparmor"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/autofs"
	binfmt_misc "github.com/checkpoint-restore/go-criu/v8/crit/images/binfmt-misc"
	bpfmap_data "github.com/checkpoint-restore/go-criu/v8/crit/images/bpfmap-data"
	bpfmap_file "github.com/checkpoint-restore/go-criu/v8/crit/images/bpfmap-file"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/cgroup"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/cpuinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/creds"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	criu_sa "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-sa"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventpoll"
	ext_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ext-file"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fh"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fifo"
	file_lock "github.com/checkpoint-restore/go-criu/v8/crit/images/file-lock"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fsnotify"
	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	ipc_msg "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-msg"
	ipc_sem "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-sem"
	ipc_shm "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-shm"
	ipc_var "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-var"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/memfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/netdev"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/ns"
	packet_sock "github.com/checkpoint-restore/go-criu/v8/crit/images/packet-sock"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pidns"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pipe"
	pipe_data "github.com/checkpoint-restore/go-criu/v8/crit/images/pipe-data"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	remap_file_path "github.com/checkpoint-restore/go-criu/v8/crit/images/remap-file-path"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/rlimit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/siginfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/signalfd"
	sk_inet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-inet"
	sk_netlink "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-netlink"
	sk_packet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-packet"
	sk_unix "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/stats"
	tcp_stream "github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timens"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timer"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timerfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tun"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/userns"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/utsns"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"github.com/checkpoint-restore/go-criu/v8/magic"
	"google.golang.org/protobuf/proto"
)

// Prefix is the first word of an image file (images v1.1).
type Prefix uint8

const (
	PrefixNone    Prefix = iota // inventory.img: magic only
	PrefixCommon                // IMG_COMMON, then the magic
	PrefixService               // IMG_SERVICE (stats-*, irmap-cache), then the magic
	PrefixRaw                   // no header at all (pages-N.img, tarballs, ip dumps)
)

// Kind describes one image type: its magic and the messages it holds.
type Kind struct {
	Magic  string // go-criu magic name ("CORE"); empty for raw images
	Value  uint32 // magic value
	Prefix Prefix
	// Types are the message types of the entries, in file order: for most
	// images one type; PAGEMAP and GHOST_FILE start with a head entry of
	// the first type followed by entries of the second.
	Types []proto.Message
}

// Raw reports whether the image has no header and no entries (page data,
// tarballs, iproute2 dumps).
func (k Kind) Raw() bool { return k.Prefix == PrefixRaw }

// typeFor returns the message type expected at entry index i.
func (k Kind) typeFor(i int) proto.Message {
	if len(k.Types) == 0 {
		return nil
	}
	if i < len(k.Types) {
		return k.Types[i]
	}
	return k.Types[len(k.Types)-1]
}

func (k Kind) accepts(i int, m proto.Message) bool {
	t := k.typeFor(i)
	return t == nil || proto.MessageName(t) == proto.MessageName(m)
}

// nameVerb is how a pattern's variable part is spelled.
const (
	verbNone = iota
	verbDec  // %u, %d, %lu
	verbHex  // %x
	verbWord // %s (stats-dump, stats-restore)
)

type pattern struct {
	prefix, suffix string
	verb           int
	magic          string
	pfx            Prefix
}

// patterns is CRIU's image name table (criu/image-desc.c) with the magic of
// each (criu/include/magic.h, values from go-criu's magic package).
var patterns = []pattern{
	{"inventory", ".img", verbNone, "INVENTORY", PrefixNone},
	{"fdinfo-", ".img", verbDec, "FDINFO", PrefixCommon},
	{"pagemap-", ".img", verbDec, "PAGEMAP", PrefixCommon},
	{"pagemap-shmem-", ".img", verbDec, "PAGEMAP", PrefixCommon},
	{"pagemap-secretmem-", ".img", verbDec, "PAGEMAP", PrefixCommon},
	{"reg-files", ".img", verbNone, "REG_FILES", PrefixCommon},
	{"ext-files", ".img", verbNone, "EXT_FILES", PrefixCommon},
	{"ns-files", ".img", verbNone, "NS_FILES", PrefixCommon},
	{"eventfd", ".img", verbNone, "EVENTFD_FILE", PrefixCommon},
	{"eventpoll", ".img", verbNone, "EVENTPOLL_FILE", PrefixCommon},
	{"eventpoll-tfd", ".img", verbNone, "EVENTPOLL_TFD", PrefixCommon},
	{"signalfd", ".img", verbNone, "SIGNALFD", PrefixCommon},
	{"inotify", ".img", verbNone, "INOTIFY_FILE", PrefixCommon},
	{"inotify-wd", ".img", verbNone, "INOTIFY_WD", PrefixCommon},
	{"fanotify", ".img", verbNone, "FANOTIFY_FILE", PrefixCommon},
	{"fanotify-mark", ".img", verbNone, "FANOTIFY_MARK", PrefixCommon},
	{"core-", ".img", verbDec, "CORE", PrefixCommon},
	{"ids-", ".img", verbDec, "IDS", PrefixCommon},
	{"mm-", ".img", verbDec, "MM", PrefixCommon},
	{"vmas-", ".img", verbDec, "VMAS", PrefixCommon},
	{"pipes", ".img", verbNone, "PIPES", PrefixCommon},
	{"pipes-data", ".img", verbNone, "PIPES_DATA", PrefixCommon},
	{"fifo", ".img", verbNone, "FIFO", PrefixCommon},
	{"fifo-data", ".img", verbNone, "FIFO_DATA", PrefixCommon},
	{"pstree", ".img", verbNone, "PSTREE", PrefixCommon},
	{"sigacts-", ".img", verbDec, "SIGACT", PrefixCommon},
	{"unixsk", ".img", verbNone, "UNIXSK", PrefixCommon},
	{"inetsk", ".img", verbNone, "INETSK", PrefixCommon},
	{"packetsk", ".img", verbNone, "PACKETSK", PrefixCommon},
	{"netlinksk", ".img", verbNone, "NETLINK_SK", PrefixCommon},
	{"sk-queues", ".img", verbNone, "SK_QUEUES", PrefixCommon},
	{"itimers-", ".img", verbDec, "ITIMERS", PrefixCommon},
	{"posix-timers-", ".img", verbDec, "POSIX_TIMERS", PrefixCommon},
	{"creds-", ".img", verbDec, "CREDS", PrefixCommon},
	{"utsns-", ".img", verbDec, "UTSNS", PrefixCommon},
	{"ipcns-var-", ".img", verbDec, "IPC_VAR", PrefixCommon},
	{"ipcns-shm-", ".img", verbDec, "IPCNS_SHM", PrefixCommon},
	{"ipcns-msg-", ".img", verbDec, "IPCNS_MSG", PrefixCommon},
	{"ipcns-sem-", ".img", verbDec, "IPCNS_SEM", PrefixCommon},
	{"fs-", ".img", verbDec, "FS", PrefixCommon},
	{"remap-fpath", ".img", verbNone, "REMAP_FPATH", PrefixCommon},
	{"ghost-file-", ".img", verbHex, "GHOST_FILE", PrefixCommon},
	{"memfd", ".img", verbNone, "MEMFD_INODE", PrefixCommon},
	{"tcp-stream-", ".img", verbHex, "TCP_STREAM", PrefixCommon},
	{"mountpoints-", ".img", verbDec, "MNTS", PrefixCommon},
	{"netdev-", ".img", verbDec, "NETDEV", PrefixCommon},
	{"netns-", ".img", verbDec, "NETNS", PrefixCommon},
	{"ifaddr-", ".img", verbDec, "", PrefixRaw},
	{"route-", ".img", verbDec, "", PrefixRaw},
	{"route6-", ".img", verbDec, "", PrefixRaw},
	{"rule-", ".img", verbDec, "", PrefixRaw},
	{"iptables-", ".img", verbDec, "", PrefixRaw},
	{"ip6tables-", ".img", verbDec, "", PrefixRaw},
	{"nftables-", ".img", verbDec, "", PrefixRaw},
	{"tmpfs-", ".tar.gz.img", verbDec, "", PrefixRaw},
	{"tmpfs-dev-", ".tar.gz.img", verbDec, "", PrefixRaw},
	{"autofs-", ".img", verbDec, "AUTOFS", PrefixCommon},
	{"binfmt-misc-", ".img", verbDec, "BINFMT_MISC", PrefixCommon},
	{"binfmt-misc", ".img", verbNone, "BINFMT_MISC", PrefixCommon},
	{"tty", ".img", verbNone, "TTY_FILES", PrefixCommon},
	{"tty-info", ".img", verbNone, "TTY_INFO", PrefixCommon},
	{"tty-data", ".img", verbNone, "TTY_DATA", PrefixCommon},
	{"filelocks", ".img", verbNone, "FILE_LOCKS", PrefixCommon},
	{"rlimit-", ".img", verbDec, "RLIMIT", PrefixCommon},
	{"pages-", ".img", verbDec, "", PrefixRaw},
	{"pages-shmem-", ".img", verbDec, "PAGEMAP", PrefixCommon},
	{"signal-s-", ".img", verbDec, "SIGNAL", PrefixCommon},
	{"signal-p-", ".img", verbDec, "SIGNAL", PrefixCommon},
	{"tunfile", ".img", verbNone, "TUNFILE", PrefixCommon},
	{"cgroup", ".img", verbNone, "CGROUP", PrefixCommon},
	{"timerfd", ".img", verbNone, "TIMERFD", PrefixCommon},
	{"cpuinfo", ".img", verbNone, "CPUINFO", PrefixCommon},
	{"seccomp", ".img", verbNone, "SECCOMP", PrefixCommon},
	{"userns-", ".img", verbDec, "USERNS", PrefixCommon},
	{"netns-ct-", ".img", verbDec, "", PrefixRaw},
	{"netns-exp-", ".img", verbDec, "", PrefixRaw},
	{"files", ".img", verbNone, "FILES", PrefixCommon},
	{"timens-", ".img", verbDec, "TIMENS", PrefixCommon},
	{"pidns-", ".img", verbDec, "PIDNS", PrefixCommon},
	{"bpfmap-file", ".img", verbNone, "BPFMAP_FILE", PrefixCommon},
	{"bpfmap-data", ".img", verbNone, "BPFMAP_DATA", PrefixCommon},
	{"apparmor", ".img", verbNone, "APPARMOR", PrefixCommon},
	{"stats-", "", verbWord, "STATS", PrefixService},
	{"irmap-cache", "", verbNone, "IRMAP_CACHE", PrefixService},
}

// messages maps a magic name to the message types of its entries (the
// same choice as CRIU's pb_desc and crit's handlers).
var messages = map[string][]proto.Message{
	"APPARMOR":       {&apparmor.ApparmorEntry{}},
	"AUTOFS":         {&autofs.AutofsEntry{}},
	"BINFMT_MISC":    {&binfmt_misc.BinfmtMiscEntry{}},
	"BPFMAP_DATA":    {&bpfmap_data.BpfmapDataEntry{}},
	"BPFMAP_FILE":    {&bpfmap_file.BpfmapFileEntry{}},
	"CGROUP":         {&cgroup.CgroupEntry{}},
	"CORE":           {&criu_core.CoreEntry{}},
	"CPUINFO":        {&cpuinfo.CpuinfoEntry{}},
	"CREDS":          {&creds.CredsEntry{}},
	"EVENTFD_FILE":   {&eventfd.EventfdFileEntry{}},
	"EVENTPOLL_FILE": {&eventpoll.EventpollFileEntry{}},
	"EVENTPOLL_TFD":  {&eventpoll.EventpollTfdEntry{}},
	"EXT_FILES":      {&ext_file.ExtFileEntry{}},
	"FANOTIFY_FILE":  {&fsnotify.FanotifyFileEntry{}},
	"FANOTIFY_MARK":  {&fsnotify.FanotifyMarkEntry{}},
	"FDINFO":         {&fdinfo.FdinfoEntry{}},
	"FIFO":           {&fifo.FifoEntry{}},
	"FIFO_DATA":      {&pipe_data.PipeDataEntry{}},
	"FILES":          {&fdinfo.FileEntry{}},
	"FILE_LOCKS":     {&file_lock.FileLockEntry{}},
	"FS":             {&fs.FsEntry{}},
	"GHOST_FILE":     {&ghost_file.GhostFileEntry{}, &ghost_file.GhostChunkEntry{}},
	"IDS":            {&criu_core.TaskKobjIdsEntry{}},
	"INETSK":         {&sk_inet.InetSkEntry{}},
	"INOTIFY_FILE":   {&fsnotify.InotifyFileEntry{}},
	"INOTIFY_WD":     {&fsnotify.InotifyWdEntry{}},
	"INVENTORY":      {&inventory.InventoryEntry{}},
	"IPCNS_MSG":      {&ipc_msg.IpcMsgEntry{}},
	"IPCNS_SEM":      {&ipc_sem.IpcSemEntry{}},
	"IPCNS_SHM":      {&ipc_shm.IpcShmEntry{}},
	"IPC_VAR":        {&ipc_var.IpcVarEntry{}},
	"IRMAP_CACHE":    {&fh.IrmapCacheEntry{}},
	"ITIMERS":        {&timer.ItimerEntry{}},
	"MEMFD_INODE":    {&memfd.MemfdInodeEntry{}},
	"MM":             {&mm.MmEntry{}},
	"MNTS":           {&mnt.MntEntry{}},
	"NETDEV":         {&netdev.NetDeviceEntry{}},
	"NETLINK_SK":     {&sk_netlink.NetlinkSkEntry{}},
	"NETNS":          {&netdev.NetnsEntry{}},
	"NS_FILES":       {&ns.NsFileEntry{}},
	"PACKETSK":       {&packet_sock.PacketSockEntry{}},
	"PAGEMAP":        {&pagemap.PagemapHead{}, &pagemap.PagemapEntry{}},
	"PIDNS":          {&pidns.PidnsEntry{}},
	"PIPES":          {&pipe.PipeEntry{}},
	"PIPES_DATA":     {&pipe_data.PipeDataEntry{}},
	"POSIX_TIMERS":   {&timer.PosixTimerEntry{}},
	"PSTREE":         {&pstree.PstreeEntry{}},
	"REG_FILES":      {&regfile.RegFileEntry{}},
	"REMAP_FPATH":    {&remap_file_path.RemapFilePathEntry{}},
	"RLIMIT":         {&rlimit.RlimitEntry{}},
	"SECCOMP":        {&seccomp.SeccompEntry{}},
	"SIGACT":         {&criu_sa.SaEntry{}},
	"SIGNAL":         {&siginfo.SignalQueueEntry{}},
	"SIGNALFD":       {&signalfd.SignalfdEntry{}},
	"SK_QUEUES":      {&sk_packet.SkPacketEntry{}},
	"STATS":          {&stats.StatsEntry{}},
	"TCP_STREAM":     {&tcp_stream.TcpStreamEntry{}},
	"TIMENS":         {&timens.TimensEntry{}},
	"TIMERFD":        {&timerfd.TimerfdEntry{}},
	"TTY_DATA":       {&tty.TtyDataEntry{}},
	"TTY_FILES":      {&tty.TtyFileEntry{}},
	"TTY_INFO":       {&tty.TtyInfoEntry{}},
	"TUNFILE":        {&tun.TunfileEntry{}},
	"UNIXSK":         {&sk_unix.UnixSkEntry{}},
	"USERNS":         {&userns.UsernsEntry{}},
	"UTSNS":          {&utsns.UtsnsEntry{}},
	"VMAS":           {&vma.VmaEntry{}},
}

var (
	magics      = magic.LoadMagic()
	magicCommon = uint32(magics.ByName["IMG_COMMON"])
	magicSvc    = uint32(magics.ByName["IMG_SERVICE"])
)

// KindOf derives the image type from a file name, as CRIU names its files
// ("core-42.img" → CORE, "stats-dump" → STATS, "pages-3.img" → raw).
func KindOf(name string) (Kind, error) {
	if err := CheckName(name); err != nil {
		return Kind{}, err
	}
	best := -1
	for i, p := range patterns {
		if !p.match(name) {
			continue
		}
		// The longest literal prefix wins: "pagemap-shmem-1.img" also
		// looks like "pagemap-%u" to a sloppy matcher.
		if best < 0 || len(p.prefix) > len(patterns[best].prefix) {
			best = i
		}
	}
	if best < 0 {
		return Kind{}, fmt.Errorf("images: %s: unknown image name", name)
	}
	p := patterns[best]
	if p.pfx == PrefixRaw {
		return Kind{Prefix: PrefixRaw}, nil
	}
	return KindByMagic(p.magic, p.pfx)
}

// KindByMagic builds a Kind from a go-criu magic name.
func KindByMagic(name string, pfx Prefix) (Kind, error) {
	v, ok := magics.ByName[name]
	if !ok {
		return Kind{}, fmt.Errorf("images: unknown magic %s", name)
	}
	return Kind{Magic: name, Value: uint32(v), Prefix: pfx, Types: messages[name]}, nil
}

func (p pattern) match(name string) bool {
	if !strings.HasPrefix(name, p.prefix) || !strings.HasSuffix(name, p.suffix) ||
		len(name) < len(p.prefix)+len(p.suffix) {
		return false
	}
	mid := name[len(p.prefix) : len(name)-len(p.suffix)]
	switch p.verb {
	case verbNone:
		return mid == ""
	case verbWord:
		return mid == "dump" || mid == "restore"
	case verbDec:
		return isDigits(mid, false)
	case verbHex:
		return isDigits(mid, true)
	}
	return false
}

func isDigits(s string, hex bool) bool {
	if s == "" || len(s) > 20 {
		return false
	}
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9':
		case hex && c >= 'a' && c <= 'f':
		case !hex && c == '-' && s[0] == '-' && len(s) > 1: // "%d" of a negative id
		default:
			return false
		}
	}
	return true
}

// Image file names godwit writes, spelled as CRIU spells them.
const (
	InventoryImg = "inventory.img"
	PstreeImg    = "pstree.img"
	FilesImg     = "files.img"
	RegFilesImg  = "reg-files.img"
	CpuinfoImg   = "cpuinfo.img"
	StatsDump    = "stats-dump"
	StatsRestore = "stats-restore"
)

// Per-task and per-object names.
func CoreImg(pid int) string          { return fmt.Sprintf("core-%d.img", pid) }
func MmImg(pid int) string            { return fmt.Sprintf("mm-%d.img", pid) }
func IdsImg(pid int) string           { return fmt.Sprintf("ids-%d.img", pid) }
func FsImg(pid int) string            { return fmt.Sprintf("fs-%d.img", pid) }
func CredsImg(pid int) string         { return fmt.Sprintf("creds-%d.img", pid) }
func FdinfoImg(filesID uint32) string { return fmt.Sprintf("fdinfo-%d.img", filesID) }
func PagemapImg(pid int) string       { return fmt.Sprintf("pagemap-%d.img", pid) }
func PagemapShmemImg(shmid uint64) string {
	return fmt.Sprintf("pagemap-shmem-%d.img", shmid)
}
func PagesImg(pagesID uint32) string { return fmt.Sprintf("pages-%d.img", pagesID) }
