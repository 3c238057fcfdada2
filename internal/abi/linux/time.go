package linux

// From include/uapi/linux/time_types.h and include/uapi/linux/time.h.

// ItimerSize is sizeof(struct itimerval) and of struct
// __kernel_itimerspec on 64-bit: two 16-byte timevals/timespecs each.
const ItimerSize = 32
