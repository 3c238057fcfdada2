package main

import (
	"github.com/spf13/cobra"

	"godwit/internal/kerndat"
)

func checkCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "check [--extra|--experimental|--all|--feature NAME]",
		Short: "Check that this kernel has what godwit needs",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			code, err := kerndat.Run(a.stdout, kerndat.Options{
				Extra: a.o.Extra, Experimental: a.o.Experimental, All: a.o.All,
				Feature: a.o.Feature,
				Errors:  a.stderr,
				OnResult: func(r kerndat.Result) {
					if r.OK() {
						a.log.Debugf("%s (%s): ok", r.Feature.Name, r.Feature.Doc)
					}
				},
			})
			if err != nil || code != 0 {
				return &exitError{code: max(code, 1), err: err}
			}
			return nil
		},
	}
	checkFlags(c.Flags(), a.o)
	return c
}
