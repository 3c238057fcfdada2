package dumper

// from include/uapi/linux/kcmp.h
const kcmpFile = 0
