// Package pagexfer is how page data moves, apart from the checkpoint
// model: a Sink takes runs of pages at virtual addresses on the dump side
// (the dumper writes into one, whatever is behind it: an images
// directory, a page server's connection), a Source yields them on the
// restore side (the restorer's fill phase reads one). ImageSink and
// ImageSource are the images-directory ends (pagemap-*.img +
// pages-*.img), the only ones; the page server's client is another Sink,
// and a lazy-pages daemon or a migration stream are further Sources.
package pagexfer
