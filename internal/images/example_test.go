package images_test

import (
	"fmt"
	"log"
	"os"

	"godwit/internal/images"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"google.golang.org/protobuf/proto"
)

// A dumper writes typed entries and pages; a restorer reads them back.
func Example() {
	tmp, _ := os.MkdirTemp("", "images-example")
	defer os.RemoveAll(tmp)
	d, err := images.Open(tmp, false)
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()

	err = images.Write(d, images.PstreeImg, &pstree.PstreeEntry{
		Pid: proto.Uint32(42), Ppid: proto.Uint32(0), Pgid: proto.Uint32(42), Sid: proto.Uint32(1)})
	if err != nil {
		log.Fatal(err)
	}

	w, err := images.CreatePages(d, images.PagemapImg(42), d.NextPagesID())
	if err != nil {
		log.Fatal(err)
	}
	w.Add(0x10000, 1, images.PagePresent|images.PageLazy)
	w.Write(make([]byte, images.PageSize)) // or w.ReadFrom(socket), or splice into w.PagesFile()
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	tree, err := images.ReadAll[*pstree.PstreeEntry](d, images.PstreeImg)
	if err != nil {
		log.Fatal(err)
	}
	r, err := images.OpenPages(d, images.PagemapImg(42))
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	for p := range r.Ranges() {
		fmt.Printf("pid %d: %#x +%d pages at offset %d of pages-%d.img\n", tree[0].GetPid(), p.Vaddr, p.NrPages, p.Offset, r.PagesID())
	}
	// Output: pid 42: 0x10000 +1 pages at offset 0 of pages-1.img
}
