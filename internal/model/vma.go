package model

import "godwit/internal/images"

// VMA is one mapping.
type VMA struct {
	Start, End uint64
	Pgoff      uint64 // file offset in bytes
	Shmid      uint64 // File id (file mappings) or shmem inode (shared anon)
	Prot       uint32
	Flags      uint32 // MAP_*
	// Status says what kind of mapping it is, in the bits of CRIU's
	// VMA_AREA_* (images.Vma*): they are the classification every codec
	// and the restorer use, so the model keeps them rather than define a
	// second set.
	Status  uint32
	Madv    uint64 // 1<<MADV_* of the advice in force
	Fdflags uint32 // open flags of the mapped file; file mappings only
	Path    string // the mapped path, for messages (not in images)
	// Droppable: a MAP_DROPPABLE mapping (godwit image: CRIU has no
	// map type for it).
	Droppable bool
	// Guards are the MADV_GUARD_INSTALL guard regions inside the VMA,
	// ascending (godwit image).
	Guards []Range
	// HugePage is the page size of a private anonymous hugetlb mapping
	// (MAP_HUGETLB), 0 for any other (godwit image).
	HugePage uint64
	// MayGuard: the kernel marks the VMA as one where guard regions were
	// installed (smaps VmFlags "gu"); dump side only, not in images.
	MayGuard bool
}

// Range is [Start, End) of addresses.
type Range struct{ Start, End uint64 }

// Private reports whether the VMA's own pages are dumped with the task's.
func (v *VMA) Private() bool { return v.Status&(images.VmaAnonPrivate|images.VmaFilePrivate) != 0 }

// SharedAnon reports whether its pages are dumped once per shmid.
func (v *VMA) SharedAnon() bool { return v.Status&images.VmaAnonShared != 0 }

// FileBacked reports whether Shmid is a File id.
func (v *VMA) FileBacked() bool { return v.Status&(images.VmaFilePrivate|images.VmaFileShared) != 0 }

// SysV reports whether it is an attach of a SysV shared memory segment:
// Shmid is the segment's id in the tree's IPC namespace, Pgoff the
// offset in it, and Fdflags O_RDWR unless attached read-only.
func (v *VMA) SysV() bool { return v.Status&images.VmaAreaSysvipc != 0 }
