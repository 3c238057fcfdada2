// nethttp is a net/http server for the network tests: built with the
// current Go, whose listeners are MPTCP by default (Go ≥ 1.24, where the
// kernel has MPTCP).
//
//	nethttp ADDR LOG
//
// GET /n answers the number of requests served so far, this one
// included. It logs "ready" once listening, then "tick N" every 10 ms.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: nethttp ADDR LOG")
		os.Exit(2)
	}
	log, err := os.Create(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var served atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/n", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d", served.Add(1))
	})
	fmt.Fprintln(log, "ready")
	go func() {
		for i := 1; ; i++ {
			time.Sleep(10 * time.Millisecond)
			fmt.Fprintf(log, "tick %d\n", i)
		}
	}()
	err = http.Serve(ln, mux)
	fmt.Fprintln(log, "serve:", err)
	os.Exit(1)
}
