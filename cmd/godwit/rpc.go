package main

import (
	"context"
	"os"

	"godwit/dumper"
	"godwit/internal/actions"
	"godwit/internal/engineopts"
	"godwit/internal/opts"
	"godwit/service"
)

// unsupported reports whether the command line refuses command's option
// as not supported yet: the RPC refuses the same criu_opts fields.
func unsupported(command, option string) bool {
	return notYet[option] && !doneIn[command][option]
}

// preDump is the RPC's PRE_DUMP: one round, as `godwit pre-dump` runs it.
// The pre-dump engine takes no action scripts: none run for a round.
func preDump(ctx context.Context, o *opts.Options, _ *actions.Scripts) error {
	_, err := runPreDump(ctx, o)
	return err
}

// runPreDump is one pre-dump round, for the CLI and the RPC alike.
func runPreDump(ctx context.Context, o *opts.Options) (*dumper.PreDumpResult, error) {
	do, err := engineopts.PreDump(o)
	if err != nil {
		return nil, err
	}
	return dumper.PreDump(ctx, do)
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
