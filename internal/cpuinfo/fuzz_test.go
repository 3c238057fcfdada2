package cpuinfo

import (
	"testing"

	cpb "github.com/checkpoint-restore/go-criu/v8/crit/images/cpuinfo"
	"google.golang.org/protobuf/proto"
)

// FuzzFromEntry feeds arbitrary cpuinfo entries (as found in an untrusted
// image) through the image-to-Info conversion and the comparison.
func FuzzFromEntry(f *testing.F) {
	host := &Info{Vendor: "GenuineIntel", Family: 6, XFeatures: 7, XsaveSize: 832, XsaveSizeMax: 832}
	host.Caps[0] = 0x1 | 1<<24
	seed, _ := proto.Marshal(host.Entry())
	f.Add(seed)
	f.Add([]byte{0x0a, 0x02, 0x08, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		var e cpb.CpuinfoEntry
		if proto.Unmarshal(data, &e) != nil {
			return
		}
		img, err := FromEntry(&e, host)
		if err != nil {
			return
		}
		for _, m := range []Caps{CapNone, CapFPU, CapCPU, CapIns, CapAll} {
			_ = Compare(img, host, m)
		}
		if Compare(img, img, CapAll) != nil {
			t.Fatal("an image does not fit itself")
		}
	})
}
