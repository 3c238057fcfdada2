package dumper

// from include/uapi/linux/time_types.h and include/uapi/linux/time.h:
// sizeof(struct itimerval) and sizeof(struct __kernel_itimerspec), two
// 16-byte timevals/timespecs each.
const itimerSize = 32
