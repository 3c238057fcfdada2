// Package dumper checkpoints a process tree (the task and every
// descendant, any number of threads each; zombies as CRIU records them)
// into CRIU-format images: Dump freezes it with ptrace, top-down
// (freezeTree), collects every piece of
// state into a checkpoint model (internal/model) — registers itself, every
// other kind (signals, credentials, timers, rlimits, the address space,
// files …) with its driver (internal/drivers), partly from /proc and
// ptrace and partly by syscalls injected into the stopped threads —,
// streams its pages through a MemoryDumper into page sinks, writes the
// model as CRIU images with internal/model/criuimg (inventory.img last)
// and then kills, resumes or stops the tasks. Any failure before that last
// step resumes every task untouched and untraced.
//
// IMAGES.md lists every image and field written and where it comes from.
//
// Memory can be read without the rest: CollectVMAs + NewMemoryDumper
// (process_vm_readv, also on a running target) or NewInjectingMemoryDumper
// (the target vmsplices its own pages into a pipe godwit took with
// pidfd_getfd; one copy fewer, frozen targets only), each writing to any
// pagexfer.Sink (pagexfer.ImageSink for an images directory, a page
// server's TaskSink).
package dumper
