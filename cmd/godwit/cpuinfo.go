package main

import (
	"github.com/spf13/cobra"

	"godwit/internal/cpuinfo"
	"godwit/internal/images"
)

func cpuinfoCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "cpuinfo dump|check",
		Short: "Save this CPU's features, or check them against saved ones",
		Args:  noArgs,
	}
	c.AddCommand(&cobra.Command{
		Use:   "dump [-D DIR]",
		Short: "Write this CPU's features to cpuinfo.img",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			d, err := images.Open(a.o.ImagesDir, true)
			if err != nil {
				return err
			}
			defer d.Close()
			return cpuinfo.Dump(d)
		},
	})
	check := &cobra.Command{
		Use:   "check [-D DIR] [--cpu-cap=CAPS]",
		Short: "Check that this CPU has the features in cpuinfo.img",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			caps := cpuinfo.DefaultCaps
			if a.o.CPUCap != "" {
				var err error
				if caps, err = cpuinfo.ParseCaps(a.o.CPUCap); err != nil {
					return err
				}
			}
			d, err := images.Open(a.o.ImagesDir, false)
			if err != nil {
				return err
			}
			defer d.Close()
			return cpuinfo.Check(d, caps)
		},
	}
	cpuCapFlag(check.Flags(), a.o)
	c.AddCommand(check)
	return c
}
