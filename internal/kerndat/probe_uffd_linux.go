package kerndat

import "godwit/uffd"

// The userfaultfd features are probed by the uffd package, which owns the
// mechanism; each call makes a fresh, complete probe.

func probeUffd() error          { return uffd.Probe().Basic() }
func probeUffdNonCoop() error   { return uffd.Probe().NonCoop() }
func probeLazyPages() error     { return uffd.Probe().LazyPages() }
func probeMemDirtyTrack() error { return uffd.Probe().DirtyTrack() }
