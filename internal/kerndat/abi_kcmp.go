package kerndat

// from include/uapi/linux/kcmp.h

const (
	kcmpFile     = 0
	kcmpVM       = 1
	kcmpEpollTFD = 7
)

// kcmpEpollSlot is struct kcmp_epoll_slot.
type kcmpEpollSlot struct {
	Efd  uint32
	Tfd  uint32
	Toff uint32
}
