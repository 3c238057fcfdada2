package criuimg

import (
	"errors"
	"fmt"
	"os"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"
	"google.golang.org/protobuf/proto"

	"godwit/internal/images"
	"godwit/internal/model"
)

// SeccompImg is CRIU's seccomp.img: one seccomp_entry with every filter
// of the tree. A thread's core names its newest filter (seccomp_filter,
// an index into the list); each filter names the one installed before it
// (prev, absent for the oldest). Chains alike in content share entries.
const SeccompImg = "seccomp.img"

// Bounds on what a seccomp image may ask for: BPF_MAXINSNS instructions of
// 8 bytes in a filter, and the kernel's bound on a chain (8192 filters of
// the minimum 4-instruction charge in MAX_INSNS_PER_PATH).
const (
	maxSeccompProg  = 4096 * 8
	maxSeccompChain = 8192
)

// seccompTable gathers the filters of the tree as written.
type seccompTable struct {
	filters []*seccomp.SeccompFilter
	index   map[string]uint32 // prev, flags and program → index
}

// add adds a chain (oldest first) and returns the index of its newest
// filter.
func (t *seccompTable) add(chain []model.SeccompFilter) uint32 {
	if t.index == nil {
		t.index = map[string]uint32{}
	}
	prev, has := uint32(0), false
	for _, f := range chain {
		key := fmt.Sprintf("%t/%d/%d/%s", has, prev, f.Flags, f.Prog)
		i, ok := t.index[key]
		if !ok {
			i = uint32(len(t.filters))
			e := &seccomp.SeccompFilter{Filter: f.Prog, Flags: proto.Uint32(f.Flags)}
			if has {
				e.Prev = proto.Uint32(prev)
			}
			t.filters = append(t.filters, e)
			t.index[key] = i
		}
		prev, has = i, true
	}
	return prev
}

// setSeccomp records th's seccomp state in its core.
func (t *seccompTable) setSeccomp(thc *criu_core.ThreadCoreEntry, th *model.Thread) error {
	switch th.Seccomp.Mode {
	case 0:
		thc.SeccompMode = criu_core.SeccompMode_disabled.Enum()
	case 1:
		thc.SeccompMode = criu_core.SeccompMode_strict.Enum()
	case 2:
		if len(th.Seccomp.Filters) == 0 {
			return errors.New("seccomp filter mode without a filter")
		}
		thc.SeccompMode = criu_core.SeccompMode_filter.Enum()
		thc.SeccompFilter = proto.Uint32(t.add(th.Seccomp.Filters))
	default:
		return fmt.Errorf("seccomp mode %d", th.Seccomp.Mode)
	}
	return nil
}

// write writes seccomp.img when any thread has a filter.
func (t *seccompTable) write(put func(string, ...proto.Message) error) error {
	if len(t.filters) == 0 {
		return nil
	}
	return put(SeccompImg, &seccomp.SeccompEntry{SeccompFilters: t.filters})
}

// readSeccomp reads th's seccomp state from its core (and seccomp.img,
// read once into *filters); tsync reports a chain CRIU marked for every
// thread of the task (see seccompFlagTsync).
func readSeccomp(d *images.Dir, filters *[]*seccomp.SeccompFilter, th *model.Thread, tc *criu_core.ThreadCoreEntry) (tsync bool, err error) {
	switch tc.GetSeccompMode() {
	case criu_core.SeccompMode_disabled:
		return false, nil
	case criu_core.SeccompMode_strict:
		th.Seccomp.Mode = 1
		return false, nil
	case criu_core.SeccompMode_filter:
	default:
		return false, fmt.Errorf("seccomp mode %v", tc.GetSeccompMode())
	}
	if tc.SeccompFilter == nil {
		return false, errors.New("seccomp filter mode without a filter")
	}
	if *filters == nil {
		e, err := images.ReadOne[*seccomp.SeccompEntry](d, SeccompImg)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return false, fmt.Errorf("seccomp filter mode, and no %s", SeccompImg)
			}
			return false, imgErr(SeccompImg, err)
		}
		*filters = e.GetSeccompFilters()
		if *filters == nil {
			*filters = []*seccomp.SeccompFilter{}
		}
	}
	chain, err := seccompChain(*filters, tc.GetSeccompFilter(), &tsync)
	if err != nil {
		return false, fmt.Errorf("%s: %w", SeccompImg, err)
	}
	th.Seccomp = model.Seccomp{Mode: 2, Filters: chain}
	return tsync, nil
}

// seccompChain follows prev links from filter i and returns the chain,
// oldest first; *tsync reports a filter marked SECCOMP_FILTER_FLAG_TSYNC.
func seccompChain(fs []*seccomp.SeccompFilter, i uint32, tsync *bool) ([]model.SeccompFilter, error) {
	var chain []model.SeccompFilter
	for {
		if int(i) >= len(fs) {
			return nil, fmt.Errorf("filter %d of %d", i, len(fs))
		}
		if len(chain) == maxSeccompChain {
			return nil, fmt.Errorf("chain of more than %d filters (a loop?)", maxSeccompChain)
		}
		f := fs[i]
		p := f.GetFilter()
		if len(p) == 0 || len(p) > maxSeccompProg || len(p)%8 != 0 {
			return nil, fmt.Errorf("filter %d: %d bytes is no BPF program", i, len(p))
		}
		if f.GetFlags()&^(seccompFlagLog|seccompFlagTsync) != 0 {
			return nil, fmt.Errorf("filter %d: flags %#x", i, f.GetFlags())
		}
		if f.GetFlags()&seccompFlagTsync != 0 {
			*tsync = true
		}
		chain = append(chain, model.SeccompFilter{Prog: p, Flags: f.GetFlags() &^ seccompFlagTsync})
		if f.Prev == nil {
			break
		}
		i = f.GetPrev()
	}
	for a, b := 0, len(chain)-1; a < b; a, b = a+1, b-1 {
		chain[a], chain[b] = chain[b], chain[a]
	}
	return chain, nil
}

// seccompFlagLog is SECCOMP_FILTER_FLAG_LOG, the one flag the kernel
// reports of an installed filter.
const seccompFlagLog = 2

// seccompFlagTsync is SECCOMP_FILTER_FLAG_TSYNC. CRIU marks a leader's
// chain with it when every thread of the task has the same chain, and
// writes the other threads as without filters: its restore installs the
// chain once, synchronised to every thread (criu/seccomp.c). godwit reads
// that as the same chain in every thread (its restorer then installs it
// with TSYNC too).
const seccompFlagTsync = 1
