package pageserver

import (
	"godwit/internal/images"
	"godwit/internal/pagexfer"
)

// Sink is where a dumper sends one pagemap's pages: a *TaskSink (page
// server) or a *LocalSink (images directory). Both produce the same
// images.
type Sink = pagexfer.Sink

var (
	_ Sink = (*TaskSink)(nil)
	_ Sink = (*LocalSink)(nil)
)

// LocalSink writes pages to an images directory, the local counterpart of
// TaskSink: the one images-directory sink, pagexfer.ImageSink.
type LocalSink = pagexfer.ImageSink

// NewLocalSink creates pagemapName (images.PagemapImg / PagemapShmemImg)
// and pages-<pagesID>.img in d.
func NewLocalSink(d *images.Dir, pagemapName string, pagesID uint32) (*LocalSink, error) {
	return pagexfer.NewImageSink(d, pagemapName, pagesID)
}
