// Package actions runs criu(8)'s --action-script hooks.
package actions

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
)

// The hook points of criu(8), in the order a dump or restore reaches them.
const (
	PreDump         = "pre-dump"
	PostDump        = "post-dump"
	PreRestore      = "pre-restore"
	PreResume       = "pre-resume" // tasks restored, stopped, waiting for the final kick
	PostRestore     = "post-restore"
	NetworkLock     = "network-lock"
	NetworkUnlock   = "network-unlock"
	SetupNamespaces = "setup-namespaces"
)

// Scripts is the list of --action-script commands of one run.
type Scripts struct {
	Commands  []string
	ImagesDir string
	// Notify, if set, is called for every action after the scripts (the
	// RPC's notify_scripts: the client runs its callback and answers);
	// its error fails the action as a script's does.
	Notify func(action string, pid int) error
}

// Run calls every script for action, with CRTOOLS_SCRIPT_ACTION set as
// criu(8) documents, plus CRTOOLS_IMAGE_DIR and, when pid > 0,
// CRTOOLS_INIT_PID. The first failing script fails the action.
func (s *Scripts) Run(action string, pid int) error {
	if s == nil {
		return nil
	}
	for _, script := range s.Commands {
		cmd := exec.Command("/bin/sh", "-c", script)
		cmd.Stdout = os.Stderr // stdout may be a pipe a caller parses
		cmd.Stderr = os.Stderr
		cmd.Env = append(os.Environ(), "CRTOOLS_SCRIPT_ACTION="+action)
		if s.ImagesDir != "" {
			cmd.Env = append(cmd.Env, "CRTOOLS_IMAGE_DIR="+s.ImagesDir)
		}
		if pid > 0 {
			cmd.Env = append(cmd.Env, "CRTOOLS_INIT_PID="+strconv.Itoa(pid))
		}
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("action script %q for %s: %w", script, action, err)
		}
	}
	if s.Notify != nil {
		if err := s.Notify(action, pid); err != nil {
			return fmt.Errorf("%s notification: %w", action, err)
		}
	}
	return nil
}
