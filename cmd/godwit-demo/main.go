// Command godwit-demo is the README's demo (scripts/demo runs it): it
// migrates a running program between two hosts made on this machine and
// prints the downtime the program observed next to godwit's figure.
package main

import (
	"flag"
	"fmt"
	"os"

	"godwit/internal/demo"
	"godwit/migrate"
)

func main() {
	o := demo.Options{Out: os.Stdout}
	flag.StringVar(&o.Godwit, "godwit", "bin/godwit", "the godwit binary")
	flag.StringVar(&o.Program, "program", "bin/memticker", "the program to migrate (e2e/workloads/memticker.c)")
	flag.IntVar(&o.MiB, "mib", 256, "the program's memory in MiB")
	flag.Float64Var(&o.Rate, "rate", 8, "MB/s the program rewrites")
	mode := flag.String("mode", string(migrate.ModePrecopy), "migrate send --mode: precopy, postcopy or hybrid")
	flag.Parse()
	o.Mode = migrate.Mode(*mode)
	if flag.NArg() != 0 || o.MiB <= 0 || o.Rate < 0 {
		fmt.Fprintln(os.Stderr, "usage: godwit-demo [-godwit BIN] [-program BIN] [-mib N] [-rate MB/s] [-mode M]")
		os.Exit(2)
	}
	if err := demo.Run(o); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
