// Package restorer rebuilds a process tree from CRIU images by driving
// puppets through ptrace (DESIGN.md, "Restore: a puppet driven through ptrace").
//
// It works in phases, so that a migration can spread them over pre-copy
// rounds (DESIGN.md, "Beyond CRIU" 4):
//
//	r, err := restorer.New(o, scripts) // read the model (criuimg), check it, nothing started
//	err = r.Layout()                   // every task made (createTree), every VMA mapped
//	err = r.FillPages(src)             // the root's pages: repeatable, any order, any pagexfer.Source
//	err = r.Finalize()                 // threads, then every driver in dependency order, registers last
//	err = r.Resume()                   // detach every thread at once (or leave stopped)
//	status, err := r.Wait()            // the root's exit status (or r.Close() for -d)
//
// Restore runs them back to back (filling every task's pages). After any
// failure every task made is killed (by PID, reaped) and the error names
// the task, the step and the object.
//
// The restorer reads the dump through the checkpoint model's CRIU codec
// (internal/model/criuimg) and restores every kind of task state with its
// driver (internal/drivers: session and group, fds, fs, signals, timers,
// rlimits, creds …), in the order the registry gives; memory layout, page
// filling and registers are its own. Options are its own too (Options);
// cmd/godwit maps its flags onto them with internal/engineopts.
//
// How (choices that matter):
//   - The root is a clone3(set_tid, CLONE_PARENT) of a puppet godwit
//     starts, so godwit is its parent; every other task a clone3(set_tid)
//     injected into its parent's puppet, before any layout (tree_linux.go:
//     sessions, groups, dead group leaders, zombies); threads are clone3(CLONE_THREAD,
//     set_tid) injected into it. The puppet's code page and a scratch area
//     live in a window outside every dumped VMA and are unmapped last,
//     after injection moved to a syscall instruction of the restored vDSO.
//   - A tree is rebuilt by several tracer threads (workers_linux.go):
//     ptrace ties a tracee to one thread, so once made (on one thread) the
//     tasks are handed round robin to four (detached, seized again), and
//     each thread lays out, fills and finalizes its own tasks while the
//     others do theirs: most of a task's time is waiting for its ptrace
//     stops. What other tasks make or take (shared memory, deleted files
//     and memfds, fd tables, open file descriptions and held objects:
//     the session, files, ctty and fs drivers) still happens in tree
//     order, each task in its turn.
//   - Files (of VMAs, fds, exe, cwd) are opened by an injected openat in
//     the task rather than passed over SCM_RIGHTS: one syscall instead of a
//     socket and two messages, and the path resolves in the task's own
//     mount namespace and root; regular files, directories and devices
//     need nothing more. SCM_RIGHTS will be needed for objects without a
//     path (pipes, sockets), which a later issue adds.
//   - Pages: a task with at most 256 pages to fill gets them by
//     process_vm_writev (no stop); a larger one itself preadv's the pages file (opened through
//     /proc/<godwit>/fd/N), up to 1024 runs per call: one copy, no buffer
//     in godwit; it measured fastest (BenchmarkRestore1GiB). Other sources
//     go through a 1 MiB buffer and process_vm_writev (or /proc/PID/mem).
//     VMAs that receive pages are mapped writable and get their dumped
//     protection in Finalize.
//   - Registers are set back verbatim, so the kernel restarts an
//     interrupted syscall itself; -ERESTART_RESTARTBLOCK (whose restart
//     block lived in the dumped kernel) becomes -ERESTARTNOHAND: the
//     syscall is re-run with its original arguments.
package restorer
