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

// preDump is what `godwit pre-dump` runs, for the CLI and the RPC alike.
func preDump(ctx context.Context, o *opts.Options, _ *actions.Scripts) error {
	_, err := runPreDump(ctx, o)
	return err
}

// runPreDump runs one pre-dump round.
func runPreDump(ctx context.Context, o *opts.Options) (*dumper.PreDumpResult, error) {
	po, err := engineopts.PreDump(o)
	if err != nil {
		return nil, err
	}
	return dumper.PreDump(ctx, po)
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
