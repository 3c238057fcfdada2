package pageserver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/quic-go/quic-go"
	"golang.org/x/sys/unix"

	"godwit/internal/logging"
)

// The benchmark runs every receiver in a child process (this test binary,
// re-executed with PS_BENCH_ROLE set) so that the server's peak RSS is its
// own and client and server compete for the 2 CPUs as in real use.
//
//	go test -run XXX -bench Throughput -benchtime 1x ./pageserver/
//
// PS_BENCH_BYTES sets the volume per transfer (default 1 GiB). The server
// writes to a directory on /dev/shm (tmpfs). Figures are the best of b.N
// rounds (-benchtime 3x), each round running every path once.

const (
	envRole  = "PS_BENCH_ROLE"
	envDir   = "PS_BENCH_DIR"
	envCerts = "PS_BENCH_CERTS"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(envRole); role != "" {
		if err := benchChild(role); err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func certOpts(dir string) TransportOptions {
	sd := filepath.Join(dir, "127.0.0.1", string(RoleServer))
	return TransportOptions{CACert: filepath.Join(dir, CACertFile), Cert: filepath.Join(sd, CertFile), Key: filepath.Join(sd, KeyFile)}
}

// benchChild serves until stdin is closed. It prints "PORT n" first.
func benchChild(role string) error {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
	o := certOpts(os.Getenv(envCerts))
	switch role {
	case "ps-tcp", "ps-quic":
		if role == "ps-tcp" {
			o = TransportOptions{}
		} else {
			o.Transport = TransportQUIC
		}
		ln, err := Listen("127.0.0.1:0", o)
		if err != nil {
			return err
		}
		fmt.Printf("PORT %d\n", ln.Port())
		return Serve(ctx, ln, Config{ImagesDir: os.Getenv(envDir), Log: logging.New(os.Stderr, 1)})
	case "ps-tls", "ps-quic-many":
		if role == "ps-tls" {
			o.TLS = true
		} else {
			o.Transport = TransportQUIC
		}
		ln, err := Listen("127.0.0.1:0", o)
		if err != nil {
			return err
		}
		fmt.Printf("PORT %d\n", ln.Port())
		// All bench peers come from 127.0.0.1: let them have every slot.
		return Serve(ctx, ln, Config{ImagesDir: os.Getenv(envDir), Log: logging.New(os.Stderr, 1),
			MaxConns: benchMaxConns, MaxConnsPerPeer: benchMaxConns})
	case "raw-tls":
		return rawTLSChild(ctx, o)
	case "raw-tcp", "raw-tcp-file", "raw-tcp-filerw":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		fmt.Printf("PORT %d\n", ln.Addr().(*net.TCPAddr).Port)
		context.AfterFunc(ctx, func() { ln.Close() })
		buf := make([]byte, copyBufSize)
		for {
			c, err := ln.Accept()
			if err != nil {
				return nil
			}
			switch role {
			case "raw-tcp":
				io.CopyBuffer(io.Discard, c, buf) // discard: the transport alone
			default:
				// The transport plus the tmpfs write (splice, or
				// read+write when "rw"): the ceiling of any server.
				os.MkdirAll(os.Getenv(envDir), 0o755)
				f, err := os.Create(filepath.Join(os.Getenv(envDir), "raw"))
				if err != nil {
					return err
				}
				if role == "raw-tcp-file" {
					f.ReadFrom(c)
				} else {
					io.CopyBuffer(writerOnly{f}, c, buf)
				}
				f.Close()
			}
			c.Write([]byte{1})
			c.Close()
		}
	case "raw-quic":
		o.Transport = TransportQUIC
		tc, err := o.tlsConfig(true, "")
		if err != nil {
			return err
		}
		ln, err := quic.ListenAddr("127.0.0.1:0", tc, o.quicConfig(true))
		if err != nil {
			return err
		}
		fmt.Printf("PORT %d\n", ln.Addr().(*net.UDPAddr).Port)
		buf := make([]byte, copyBufSize)
		for {
			qc, err := ln.Accept(ctx)
			if err != nil {
				return nil
			}
			st, err := qc.AcceptStream(ctx)
			if err != nil {
				continue
			}
			io.CopyBuffer(io.Discard, st, buf)
			st.Write([]byte{1})
			st.Close()
		}
	}
	return fmt.Errorf("unknown role %s", role)
}

type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	port  int
}

func startChild(b *testing.B, role, dir, certs string) *child {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=XXX")
	cmd.Env = append(os.Environ(), envRole+"="+role, envDir+"="+dir, envCerts+"="+certs)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	ch := &child{cmd: cmd, stdin: stdin}
	b.Cleanup(func() { ch.stop() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "PORT ") {
		b.Fatalf("child %s: %q, %v", role, line, err)
	}
	ch.port, _ = strconv.Atoi(strings.TrimSpace(line[5:]))
	return ch
}

// peakRSS is the child's VmHWM in bytes.
func (c *child) peakRSS() int64 {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(st), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return -1
}

func (c *child) stop() {
	if c.cmd.Process == nil || c.cmd.ProcessState != nil {
		return
	}
	c.stdin.Close()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

func (c *child) addr() string { return fmt.Sprintf("127.0.0.1:%d", c.port) }

const benchChunk = 64 << 20 // one AddPages: 64 MiB, a large VMA

// benchData is a reused, warmed buffer of page data.
var benchData = sync.OnceValue(func() []byte {
	b := make([]byte, benchChunk)
	fillPages(b, 0, 0x5a5a)
	return b
})

func benchBytes() int64 {
	if v, err := strconv.ParseInt(os.Getenv("PS_BENCH_BYTES"), 0, 64); err == nil && v > 0 {
		return v / benchChunk * benchChunk
	}
	return 1 << 30
}

// sendPS sends total bytes as 64 MiB ranges of one task, from memory, a
// pipe filled by vmsplice (the dumper's parasite-free path), or a memfd
// (sendfile).
func sendPS(b *testing.B, addr string, o TransportOptions, total int64, src string) time.Duration {
	ctx := context.Background()
	data := benchData()
	start := time.Now()
	c, err := Dial(ctx, addr, o)
	if err != nil {
		b.Fatal(err)
	}
	s, err := c.OpenTask(ctx, TaskDst(1), true)
	if err != nil {
		b.Fatal(err)
	}
	var memfd *os.File
	if src == "memfd" {
		fd, err := unix.MemfdCreate("pages", unix.MFD_CLOEXEC)
		if err != nil {
			b.Fatal(err)
		}
		memfd = os.NewFile(uintptr(fd), "memfd")
		defer memfd.Close()
		memfd.Write(data)
	}
	nr := uint64(benchChunk / PageSize)
	for off := int64(0); off < total; off += benchChunk {
		vaddr := 0x7f0000000000 + uint64(off)
		switch src {
		case "mem":
			err = s.AddPagesBytes(vaddr, FlagPresent, data)
		case "memfd":
			memfd.Seek(0, 0)
			err = s.AddPages(vaddr, nr, FlagPresent, memfd)
		case "pipe":
			pr, pw, perr := os.Pipe()
			if perr != nil {
				b.Fatal(perr)
			}
			unix.FcntlInt(pw.Fd(), unix.F_SETPIPE_SZ, spliceChunk)
			go func() {
				defer pw.Close()
				for p := 0; p < len(data); {
					iov := []unix.Iovec{{Base: (*byte)(unsafe.Pointer(&data[p])), Len: uint64(min(spliceChunk, len(data)-p))}}
					n, err := unix.Vmsplice(int(pw.Fd()), iov, 0)
					if err != nil {
						return
					}
					p += n
				}
			}()
			err = s.AddPages(vaddr, nr, FlagPresent, pr)
			pr.Close()
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	if err := c.Close(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func sendRawTCP(b *testing.B, addr string, total int64) time.Duration {
	data := benchData()
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	for off := int64(0); off < total; off += benchChunk {
		if _, err := c.Write(data); err != nil {
			b.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		b.Fatal(err)
	}
	c.Close()
	return time.Since(start)
}

func sendRawQUIC(b *testing.B, addr string, o TransportOptions, total int64) time.Duration {
	data := benchData()
	o.Transport = TransportQUIC
	tc, err := o.tlsConfig(false, "127.0.0.1")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	start := time.Now()
	qc, err := quic.DialAddr(ctx, addr, tc, o.quicConfig(false))
	if err != nil {
		b.Fatal(err)
	}
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for off := int64(0); off < total; off += benchChunk {
		if _, err := st.Write(data); err != nil {
			b.Fatal(err)
		}
	}
	st.Close()
	var ack [1]byte
	if _, err := io.ReadFull(st, ack[:]); err != nil {
		b.Fatal(err)
	}
	qc.CloseWithError(0, "")
	return time.Since(start)
}

func BenchmarkThroughput(b *testing.B) {
	total := benchBytes()
	// PS_BENCH_TMPFS picks another tmpfs (e.g. one mounted huge=always).
	base := "/dev/shm"
	if v := os.Getenv("PS_BENCH_TMPFS"); v != "" {
		base = v
	}
	shm, err := os.MkdirTemp(base, "godwit-psbench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(shm) })
	certs := filepath.Join(shm, "certs")
	os.Mkdir(certs, 0o700)
	ca, cakey, err := GenerateDevCA(certs)
	if err != nil {
		b.Fatal(err)
	}
	if _, _, err := GenerateHostCerts(ca, cakey, certs, "127.0.0.1"); err != nil {
		b.Fatal(err)
	}
	o := clientOf(certOpts(certs))
	// Warm up: first touch of guest RAM costs ~12 µs a page on these VMs;
	// fill and free as much tmpfs as one transfer takes, so that every
	// measurement writes to warm memory.
	warm, err := os.Create(filepath.Join(shm, "warm"))
	if err != nil {
		b.Fatal(err)
	}
	for off := int64(0); off < total+benchChunk; off += benchChunk {
		warm.Write(benchData())
	}
	warm.Close()
	os.Remove(warm.Name())
	// The running process whose pages the proc rows send (PS_BENCH_PROC=0
	// leaves them out).
	var proc *procSource
	if os.Getenv("PS_BENCH_PROC") != "0" {
		proc = startProcSource(b, shm, total)
	}
	var d = map[string]time.Duration{}
	rss := map[string]int64{}
	for i := 0; i < b.N; i++ {
		run := func(name, role string, f func(addr string) time.Duration) {
			dir := filepath.Join(shm, fmt.Sprintf("%s-%d", name, i))
			ch := startChild(b, role, dir, certs)
			// Best of b.N: the 2 CPUs are shared, the best run is the
			// one least disturbed.
			if t := f(ch.addr()); d[name] == 0 || t < d[name] {
				d[name] = t
			}
			if r := ch.peakRSS(); r > rss[name] {
				rss[name] = r
			}
			ch.stop()
			os.RemoveAll(dir) // keep tmpfs use to one transfer
		}
		run("rawTCP", "raw-tcp", func(a string) time.Duration { return sendRawTCP(b, a, total) })
		run("rawTCPtmpfs", "raw-tcp-file", func(a string) time.Duration { return sendRawTCP(b, a, total) })
		run("rawTCPtmpfsRW", "raw-tcp-filerw", func(a string) time.Duration { return sendRawTCP(b, a, total) })
		for _, src := range []string{"mem", "pipe", "memfd"} {
			run("psTCP-"+src, "ps-tcp", func(a string) time.Duration { return sendPS(b, a, TransportOptions{}, total, src) })
		}
		run("rawQUIC", "raw-quic", func(a string) time.Duration { return sendRawQUIC(b, a, o, total) })
		qo := o
		qo.Transport = TransportQUIC
		run("psQUIC-mem", "ps-quic", func(a string) time.Duration { return sendPS(b, a, qo, total, "mem") })
		if proc != nil {
			imgs := filepath.Join(shm, "dump-images")
			run("psTCP-proc", "ps-tcp", func(a string) time.Duration { return proc.dump(b, a, TransportOptions{}, imgs) })
			run("psQUIC-proc", "ps-quic", func(a string) time.Duration { return proc.dump(b, a, qo, imgs) })
		}
	}
	keys := []string{"rawTCP", "rawTCPtmpfs", "rawTCPtmpfsRW", "psTCP-mem", "psTCP-pipe", "psTCP-memfd", "rawQUIC", "psQUIC-mem"}
	if proc != nil {
		proc.finish(b)
		keys = append(keys, "psTCP-proc", "psQUIC-proc")
	}
	mbs := func(k string) float64 { return float64(total) / d[k].Seconds() / 1e6 }
	for _, k := range keys {
		b.ReportMetric(mbs(k), k+"_MB/s")
	}
	if proc != nil {
		b.ReportMetric(mbs("psTCP-proc")/mbs("rawTCP"), "ratioTCPproc")
		b.ReportMetric(mbs("psQUIC-proc")/mbs("rawQUIC"), "ratioQUICproc")
		b.ReportMetric(float64(max(rss["psTCP-proc"]))/(1<<20), "psTCPproc_peakRSS_MiB")
	}
	b.ReportMetric(mbs("psTCP-mem")/mbs("rawTCP"), "ratioTCPmem")
	b.ReportMetric(mbs("psTCP-pipe")/mbs("rawTCP"), "ratioTCPpipe")
	b.ReportMetric(mbs("psTCP-mem")/mbs("rawTCPtmpfs"), "ratioTCPmem_vs_rawTCPtmpfs")
	b.ReportMetric(mbs("psQUIC-mem")/mbs("rawQUIC"), "ratioQUIC")
	b.ReportMetric(float64(max(rss["psTCP-mem"], rss["psTCP-pipe"], rss["psTCP-memfd"]))/(1<<20), "psTCP_peakRSS_MiB")
	b.ReportMetric(float64(rss["psQUIC-mem"])/(1<<20), "psQUIC_peakRSS_MiB")
	b.ReportMetric(float64(rss["rawQUIC"])/(1<<20), "rawQUIC_peakRSS_MiB")
	b.ReportMetric(0, "ns/op")
}
