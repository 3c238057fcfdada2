package linux

// From include/linux/mm_types.h and include/uapi/linux/auxvec.h (with
// arch/x86/include/uapi/asm/auxvec.h's AT_VECTOR_SIZE_ARCH).

// MaxAuxvWords is AT_VECTOR_SIZE on x86-64,
// 2*(AT_VECTOR_SIZE_ARCH 3 + AT_VECTOR_SIZE_BASE 22 + 1): the size of
// mm->saved_auxv, so PR_SET_MM_MAP refuses a longer auxv.
const MaxAuxvWords = 2 * (3 + 22 + 1)
