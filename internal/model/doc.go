// Package model is godwit's checkpoint of a process tree, independent of
// any image format: a Tree of Tasks (ids, state, threads with their
// registers, per-task kernel state) and the objects tasks share (open
// files, …), each object with an id allocated once per kernel object
// (the kernel identity — kcmp, device and inode — is what the dumper
// dedupes on). Page data is not in the model: pages travel in streams of
// their own (internal/pagexfer's sinks and sources), keyed by the
// task's pid and by shared-memory object id.
//
// The dumper fills a Tree from a frozen tree (its drivers, one per kind
// of state), a codec writes and reads it (internal/model/criuimg: CRIU
// images), and the restorer rebuilds tasks from it.
package model
