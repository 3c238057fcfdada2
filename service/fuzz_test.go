package service

import (
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
)

// FuzzRequest feeds the criu_req parser what a client could send: it must
// not panic, and what it accepts must encode again.
func FuzzRequest(f *testing.F) {
	for _, r := range []*rpc.CriuReq{
		versionReq,
		cpuinfoDump(3),
		{Type: rpc.CriuReqType_FEATURE_CHECK.Enum(), Features: &rpc.CriuFeatures{MemTrack: ptr(true), LazyPages: ptr(false)}},
		{Type: rpc.CriuReqType_DUMP.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(-1)), ImagesDir: ptr("/tmp/x"), Pid: ptr(int32(1)), External: []string{"mnt[]:m"}}},
		{Type: rpc.CriuReqType_RESTORE.Enum(), Opts: &rpc.CriuOpts{ImagesDirFd: ptr(int32(3)), LogFile: ptr("r.log"), CpuCap: ptr(uint32(5)),
			InheritFd: []*rpc.InheritFd{{Key: ptr("pipe:[1]"), Fd: ptr(int32(4))}}, CgRoot: []*rpc.CgroupRoot{{Ctrl: ptr("cpu"), Path: ptr("/x")}},
			Ps: &rpc.CriuPageServerInfo{Address: ptr("::1"), Port: ptr(int32(7))}, ManageCgroupsMode: rpc.CriuCgMode_SOFT.Enum()}},
	} {
		b, err := r.MarshalVT()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0x01, 0x02})
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := decodeRequest(b)
		if err != nil {
			return
		}
		if _, err := req.MarshalVT(); err != nil {
			t.Fatalf("decoded request does not encode: %v", err)
		}
		req.GetOpts().GetImagesDirFd()
		_ = req.GetType().String()
		// criu_opts onto the CLI's options: refused or mapped, never a
		// panic; a log file is never a path.
		for _, cmd := range []string{"dump", "pre-dump", "restore", "page-server"} {
			o, err := mapOptions(cmd, req.GetOpts(), func(string, string) bool { return false })
			if err == nil && strings.Contains(o.LogFile, "/") {
				t.Fatalf("log file %q accepted", o.LogFile)
			}
		}
	})
}
