package procfs

import "unsafe"

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

func uintptrOfInt32(p *int32) uintptr { return uintptr(unsafe.Pointer(p)) }
