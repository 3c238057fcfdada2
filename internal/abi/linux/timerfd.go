package linux

// From include/uapi/linux/timerfd.h.

// TfdIocSetTicks is TFD_IOC_SET_TICKS, _IOW('T', 0, __u64).
const TfdIocSetTicks = 0x40085400
