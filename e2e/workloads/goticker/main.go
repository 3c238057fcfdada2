// Command goticker is the Go workload of godwit's end-to-end tests: the Go
// runtime holds an epoll instance and an eventfd (its netpoller), threads
// and timers. A goroutine sends the ticks of a time.Ticker on a channel;
// main logs each as "tick N" to LOG. On SIGUSR1 it checks that no tick
// was lost or repeated, logs "done ticks=N ok" and exits 0 (3 otherwise).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: goticker LOG")
		os.Exit(2)
	}
	f, err := os.OpenFile(os.Args[1], os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	ticks := make(chan int)
	go func() {
		t := time.NewTicker(10 * time.Millisecond)
		n := 0
		for range t.C {
			n++
			ticks <- n
		}
	}()
	last := 0
	for {
		select {
		case n := <-ticks:
			if n != last+1 {
				fmt.Fprintf(f, "FAIL: tick %d after %d\n", n, last)
				os.Exit(3)
			}
			last = n
			fmt.Fprintf(f, "tick %d\n", n)
		case <-usr1:
			fmt.Fprintf(f, "done ticks=%d ok\n", last)
			os.Exit(0)
		}
	}
}
