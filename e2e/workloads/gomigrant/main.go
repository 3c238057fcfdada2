// Command gomigrant is the Go workload of godwit's migration tests: eight
// goroutines, each locked to an OS thread of its own, keep rewriting their
// share of MiB of memory (-m) and counting, while main logs "tick N" every
// 10 ms to LOG. Each worker records in a shadow table (itself memory that
// moves) what it last wrote to each of its pages. On SIGUSR1 the workers
// stop and main checks every page against the shadow and the counters
// (the shared one must equal the sum of the workers' own), logs
// "done ticks=N ok" and exits 0, or logs what is wrong and exits 3.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	workers  = 8
	pageSize = 4096
	words    = pageSize / 8
)

func main() {
	mib := flag.Int("m", 32, "MiB of memory to rewrite")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: gomigrant [-m MiB] LOG")
		os.Exit(2)
	}
	log, err := os.OpenFile(flag.Arg(0), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)

	pages := *mib * 256 / workers
	mem := make([][]uint64, workers)
	shadow := make([][]uint64, workers)
	own := make([]uint64, workers)
	var shared atomic.Uint64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for k := range workers {
		mem[k] = make([]uint64, pages*words)
		shadow[k] = make([]uint64, pages)
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			for n := uint64(1); !stop.Load(); n++ {
				// A few pages per millisecond, each wholly rewritten.
				for j := range 4 {
					p := int((n*4 + uint64(j)) % uint64(pages))
					v := uint64(k)<<56 | n<<8 | uint64(j)
					page := mem[k][p*words : (p+1)*words]
					for i := range page {
						page[i] = v
					}
					shadow[k][p] = v
				}
				own[k]++
				shared.Add(1)
				time.Sleep(time.Millisecond)
			}
		}()
	}
	tick := time.NewTicker(10 * time.Millisecond)
	for n := 1; ; n++ {
		select {
		case <-tick.C:
			fmt.Fprintf(log, "tick %d\n", n)
			continue
		case <-usr1:
		}
		stop.Store(true)
		wg.Wait()
		var sum uint64
		for k := range workers {
			sum += own[k]
			for p := range pages {
				for _, w := range mem[k][p*words : (p+1)*words] {
					if w != shadow[k][p] {
						fmt.Fprintf(log, "bad worker %d page %d: %#x want %#x\n", k, p, w, shadow[k][p])
						os.Exit(3)
					}
				}
			}
		}
		if sum != shared.Load() {
			fmt.Fprintf(log, "bad counters: shared %d, sum of own %d\n", shared.Load(), sum)
			os.Exit(3)
		}
		fmt.Fprintf(log, "done ticks=%d ok\n", n)
		os.Exit(0)
	}
}
