package linux

// From include/uapi/linux/kcmp.h.

// kcmp(2) comparison types (enum kcmp_type).
const (
	KcmpFile     = 0
	KcmpVM       = 1
	KcmpFiles    = 2
	KcmpFS       = 3
	KcmpSighand  = 4
	KcmpEpollTFD = 7
)

// KcmpEpollSlot is struct kcmp_epoll_slot, the last argument of
// kcmp(KCMP_EPOLL_TFD).
type KcmpEpollSlot struct {
	Efd  uint32
	Tfd  uint32
	Toff uint32
}
