package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"godwit/internal/opts"
)

// verbosity is -v: each bare use adds one level (pflag hands "+1" for a bare
// -v, and once per v of -vvv); -vN and --verbosity=N set the level.
type verbosity struct{ p *int }

func (v verbosity) String() string { return strconv.Itoa(*v.p) }
func (v verbosity) Type() string   { return "level" }
func (v verbosity) Set(s string) error {
	if s == "+1" {
		*v.p++
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("want a level 0-4")
	}
	*v.p = n
	return nil
}

// expandVerbosity rewrites -vN (getopt's optional argument glued to a short
// option, which pflag cannot express) into --verbosity=N.
func expandVerbosity(args []string) []string {
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 2 && strings.HasPrefix(a, "-v") && isDigits(a[2:]) {
			a = "--verbosity=" + a[2:]
		}
		out = append(out, a)
	}
	return out
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// listValue is a repeatable option whose every argument is checked by parse.
type listValue[T any] struct {
	p     *[]T
	parse func(string) (T, error)
	typ   string
}

func (l *listValue[T]) String() string {
	parts := make([]string, len(*l.p))
	for i, v := range *l.p {
		parts[i] = fmt.Sprint(v)
	}
	return strings.Join(parts, ",")
}
func (l *listValue[T]) Type() string { return l.typ }
func (l *listValue[T]) Set(s string) error {
	v, err := l.parse(s)
	if err != nil {
		return err
	}
	*l.p = append(*l.p, v)
	return nil
}

// parsedString is a string option checked (and normalised) by parse.
type parsedString struct {
	p     *string
	parse func(string) (string, error)
	typ   string
}

func (v parsedString) String() string { return *v.p }
func (v parsedString) Type() string   { return v.typ }
func (v parsedString) Set(s string) error {
	r, err := v.parse(s)
	if err != nil {
		return err
	}
	*v.p = r
	return nil
}

// sizeValue is --ghost-limit: bytes with K/M/G suffixes.
type sizeValue struct{ p *uint64 }

func (v sizeValue) String() string { return strconv.FormatUint(*v.p, 10) }
func (v sizeValue) Type() string   { return "size" }
func (v sizeValue) Set(s string) error {
	n, err := opts.ParseSize(s)
	if err != nil {
		return err
	}
	*v.p = n
	return nil
}

// notBool is a boolean option that is on by default, kept as its
// negation (false: the option is on).
type notBool struct{ p *bool }

func (v notBool) String() string   { return strconv.FormatBool(!*v.p) }
func (v notBool) Type() string     { return "bool" }
func (v notBool) IsBoolFlag() bool { return true }
func (v notBool) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*v.p = !b
	return nil
}

// ghostFiemapFlag is --ghost-fiemap (the default; --no-ghost-fiemap
// turns it off): find a deleted file's holes with FIEMAP.
func ghostFiemapFlag(fs *pflag.FlagSet, o *opts.Options) {
	f := fs.VarPF(notBool{&o.NoGhostFiemap}, "ghost-fiemap", "", "find the holes of deleted files with FIEMAP, else SEEK_DATA/SEEK_HOLE (default; --no-ghost-fiemap: SEEK_DATA/SEEK_HOLE only); holes are kept either way")
	f.NoOptDefVal = "true"
}

// negation is the hidden --no-NAME twin of a boolean long option.
type negation struct{ target pflag.Value }

func (n negation) String() string { return "false" }
func (n negation) Type() string   { return "bool" }
func (n negation) IsBoolFlag() bool {
	return true
}
func (n negation) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	return n.target.Set(strconv.FormatBool(!b))
}

// addNegations gives every boolean long option of fs a --no- form, as
// criu(8) does for its true/false options.
func addNegations(fs *pflag.FlagSet) {
	var bools []*pflag.Flag
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Value.Type() == "bool" && !strings.HasPrefix(f.Name, "no-") && f.Name != "help" {
			bools = append(bools, f)
		}
	})
	for _, f := range bools {
		if fs.Lookup("no-"+f.Name) != nil {
			continue
		}
		nf := fs.VarPF(negation{f.Value}, "no-"+f.Name, "", "negate --"+f.Name)
		nf.NoOptDefVal = "true"
		nf.Hidden = true
	}
}

func intListValue(p *[]int) *listValue[int] {
	return &listValue[int]{p: p, typ: "fd", parse: func(s string) (int, error) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("want a file descriptor number")
		}
		return n, nil
	}}
}

func stringListValue(p *[]string, typ string, check func(string) error) *listValue[string] {
	return &listValue[string]{p: p, typ: typ, parse: func(s string) (string, error) {
		if check != nil {
			if err := check(s); err != nil {
				return "", err
			}
		}
		return s, nil
	}}
}
