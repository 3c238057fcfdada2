package main

import (
	"context"
	"os"

	"godwit/internal/actions"
	"godwit/internal/opts"
	"godwit/service"
)

// unsupported reports whether the command line refuses command's option
// as not supported yet: the RPC refuses the same criu_opts fields.
func unsupported(command, option string) bool {
	return notYet[option] && !doneIn[command][option]
}

// preDump is what `godwit pre-dump` runs, for the CLI and the RPC alike.
func preDump(context.Context, *opts.Options, *actions.Scripts) error {
	return errNotYet("pre-dump")
}

// rpcHooks connect the RPC service to the command line's own decisions
// and code.
func rpcHooks() service.Hooks {
	exe, err := os.Executable()
	if err != nil {
		exe = "" // PAGE_SERVER then says it has no executable
	}
	return service.Hooks{Unsupported: unsupported, PreDump: preDump, Executable: exe}
}
