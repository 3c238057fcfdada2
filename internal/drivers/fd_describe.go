package drivers

import (
	"fmt"
	"slices"
	"sync"

	"godwit/internal/model"
)

// Which fds of a task hold one open file description, and which hold one
// that an fd of a task dumped before holds: kcmp (KCMP_FILE) orders
// descriptions as the kernel does, and only fds of one descKey are ever
// compared. The descriptions seen so far are kept, per key, in that
// order (Files.descs), so an fd is placed among them by binary search.
// The task's new descriptions are then sorted among themselves (a merge
// sort, its two halves on two cores) and merged into the lists in one
// pass: O(n log n) kcmp calls and no step quadratic in the fds.

// parallelSortMin is the smallest group sorted on two cores.
const parallelSortMin = 256

// fdPlace is where describeAll put an fd.
type fdPlace struct {
	id     model.ID // the description of an earlier task, 0: none
	at     int      // else its place in that key's list (binary search)
	leader int      // and the first fd of the task with its description
}

// describeAll places every fd of pid: an existing description, or a new
// one led by the lowest fd of the task that holds it.
func (f *Files) describeAll(pid int, fds []FD) ([]fdPlace, map[inodeKey][]pendingNew, error) {
	places := make([]fdPlace, len(fds))
	keys := make([]inodeKey, len(fds))
	for i := range fds {
		keys[i] = descKey(&fds[i])
	}
	// Binary search among the earlier tasks' descriptions (read only:
	// two workers).
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for w := range 2 {
		lo, hi := len(fds)*w/2, len(fds)*(w+1)/2
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := lo; i < hi; i++ {
				id, at, err := f.describe(pid, fds[i].Num, f.descs[keys[i]])
				if err != nil {
					errs[w] = fmt.Errorf("fd %d: %w", fds[i].Num, err)
					return
				}
				places[i] = fdPlace{id: id, at: at, leader: i}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, nil, err
		}
	}
	// The new ones, by key and place: fds placed apart cannot share.
	type group struct {
		key inodeKey
		at  int
	}
	groups := map[group][]int{}
	for i := range fds {
		if places[i].id == 0 {
			g := group{keys[i], places[i].at}
			groups[g] = append(groups[g], i)
		}
	}
	for _, members := range groups {
		if len(members) < 2 {
			continue
		}
		s := &kcmpSort{pid: pid, fds: fds}
		sorted, eq, err := s.sort(members, true)
		if err != nil {
			return nil, nil, err
		}
		// Runs of equal fds: one description, led by its lowest fd.
		for j := 0; j < len(sorted); {
			k := j + 1
			lead := sorted[j]
			for k < len(sorted) && eq[pair(sorted[k-1], sorted[k])] {
				lead = min(lead, sorted[k])
				k++
			}
			for _, m := range sorted[j:k] {
				places[m].leader = lead
			}
			j = k
		}
		// The order the merge into the list needs: the group's
		// descriptions in kcmp order, each by its leader.
		var leaders []int
		for _, m := range sorted {
			if places[m].leader == m {
				leaders = append(leaders, m)
			}
		}
		groups[group{keys[members[0]], places[members[0]].at}] = leaders
	}
	return places, groups2lists(groups, func(g group) (inodeKey, int) { return g.key, g.at }), nil
}

// pendingNew is a key's new descriptions (fds of the task by index), in
// kcmp order, to go before the list's element at.
type pendingNew struct {
	at      int
	leaders []int
}

func groups2lists[G comparable](groups map[G][]int, split func(G) (inodeKey, int)) map[inodeKey][]pendingNew {
	out := map[inodeKey][]pendingNew{}
	for g, members := range groups {
		k, at := split(g)
		out[k] = append(out[k], pendingNew{at: at, leaders: members})
	}
	for _, l := range out {
		slices.SortFunc(l, func(a, b pendingNew) int { return a.at - b.at })
	}
	return out
}

// mergeDescs adds the task's new descriptions (their leaders' ids set)
// to the kcmp-ordered lists, one pass per key.
func (f *Files) mergeDescs(pid int, fds []FD, ids []model.ID, pending map[inodeKey][]pendingNew) {
	if f.descs == nil {
		f.descs = map[inodeKey][]descRef{}
	}
	for key, news := range pending {
		old := f.descs[key]
		n := len(old)
		for _, p := range news {
			n += len(p.leaders)
		}
		merged := make([]descRef, 0, n)
		i := 0
		for _, p := range news {
			merged = append(merged, old[i:p.at]...)
			i = p.at
			for _, m := range p.leaders {
				merged = append(merged, descRef{pid: pid, fd: fds[m].Num, id: ids[m]})
			}
		}
		f.descs[key] = append(merged, old[i:]...)
	}
}

func pair(a, b int) [2]int {
	if a > b {
		a, b = b, a
	}
	return [2]int{a, b}
}

// kcmpSort sorts fds of one task (by index) in kcmp order, noting which
// compared equal. A correct comparison sort compares every two elements
// that end up side by side, so the equal ones it notes are all of them
// (equality is transitive: runs of noted pairs).
type kcmpSort struct {
	pid int
	fds []FD
}

func (s *kcmpSort) sort(a []int, parallel bool) ([]int, map[[2]int]bool, error) {
	eq := map[[2]int]bool{}
	if len(a) < 2 {
		return a, eq, nil
	}
	mid := len(a) / 2
	var left, right []int
	var leq, req map[[2]int]bool
	var lerr, rerr error
	if parallel && len(a) >= parallelSortMin {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			left, leq, lerr = s.sort(a[:mid], false)
		}()
		right, req, rerr = s.sort(a[mid:], false)
		wg.Wait()
	} else {
		left, leq, lerr = s.sort(a[:mid], false)
		if lerr == nil {
			right, req, rerr = s.sort(a[mid:], false)
		}
	}
	if lerr != nil {
		return nil, nil, lerr
	}
	if rerr != nil {
		return nil, nil, rerr
	}
	for k := range leq {
		eq[k] = true
	}
	for k := range req {
		eq[k] = true
	}
	out := make([]int, 0, len(a))
	i, j := 0, 0
	for i < len(left) && j < len(right) {
		x, y := &s.fds[left[i]], &s.fds[right[j]]
		c, err := kcmpFile(s.pid, x.Num, s.pid, y.Num)
		if err != nil {
			return nil, nil, err
		}
		switch c {
		case 0:
			eq[pair(left[i], right[j])] = true
			out = append(out, left[i])
			i++
		case 1: // x's description orders before y's
			out = append(out, left[i])
			i++
		case 2:
			out = append(out, right[j])
			j++
		default:
			return nil, nil, fmt.Errorf("kcmp fd %d of %d: no order (%d)", x.Num, s.pid, c)
		}
	}
	out = append(out, left[i:]...)
	out = append(out, right[j:]...)
	return out, eq, nil
}
