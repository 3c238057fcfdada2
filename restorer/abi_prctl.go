package restorer

// From include/uapi/linux/prctl.h: struct prctl_mm_map (104 bytes):
// start_code, end_code, start_data, end_data, start_brk, brk, start_stack,
// arg_start, arg_end, env_start, env_end (u64 each), auxv (pointer),
// auxv_size (u32), exe_fd (u32).
const prctlMmMapSize = 104

// From include/linux/mm_types.h and include/uapi/linux/auxvec.h: the
// kernel's saved_auxv holds at most AT_VECTOR_SIZE words
// (2*(AT_VECTOR_SIZE_ARCH 3 + AT_VECTOR_SIZE_BASE 22 + 1)); PR_SET_MM_MAP
// refuses a larger auxv.
const maxAuxvWords = 2 * (3 + 22 + 1)
