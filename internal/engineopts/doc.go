// Package engineopts maps godwit's command-line (and RPC) options onto
// the engine's own: dumper.Options and restorer.Options. It is the one
// place that knows both, so that the engine packages never see the CLI's
// option set, and refuses here what the engine cannot do.
package engineopts
