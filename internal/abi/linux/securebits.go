package linux

// From include/uapi/linux/securebits.h.

// SecbitKeepCaps is SECBIT_KEEP_CAPS (1 << SECURE_KEEP_CAPS).
const SecbitKeepCaps = 1 << 4
