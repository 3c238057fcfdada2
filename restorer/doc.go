// Package restorer rebuilds a process from CRIU images by driving a puppet
// through ptrace (DESIGN.md, "Restore: a puppet driven through ptrace").
//
// It works in phases, so that a migration can spread them over pre-copy
// rounds (DESIGN.md, "Beyond CRIU" 4):
//
//	r, err := restorer.New(o, scripts) // read and check every image, nothing started
//	err = r.Layout()                   // puppet with the original PID, every VMA mapped
//	err = r.FillPages(src)             // repeatable, any order, any PageSource
//	err = r.Finalize()                 // fds, fs, signals, timers, rlimits, threads, registers, creds
//	err = r.Resume()                   // detach every thread at once (or leave stopped)
//	status, err := r.Wait()            // the task's exit status
//
// Restore runs them back to back. After any failure the partial task is
// killed (by PID, reaped) and the error names the step and the object.
package restorer
