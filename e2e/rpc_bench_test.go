package e2e

import (
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"golang.org/x/sys/unix"
)

// BenchmarkRPCOverhead measures what the RPC adds to a dump and to a
// restore: go-criu driving `godwit swrk` against the same operation by
// the command line (`godwit dump -R`, `godwit restore -d`), interleaved,
// medians of the pairs. The CLI's time is the floor; the goal is under
// 5 ms added.
//
//	go test ./e2e -run '^$' -bench RPCOverhead -benchtime 20x
func BenchmarkRPCOverhead(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	// Restored tasks are reparented to us when godwit exits: reap them.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		b.Fatal(err)
	}
	w := exec.Command(workloads["counter-static"], b.TempDir()+"/log")
	w.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	if err := w.Start(); err != nil {
		b.Fatal(err)
	}
	pid := w.Process.Pid
	defer func() { w.Process.Kill(); w.Wait() }()
	time.Sleep(200 * time.Millisecond)
	timeIt := func(f func() error) time.Duration {
		t0 := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	cliDump := func() error {
		out, err := exec.Command(godwitBin, "dump", "-R", "-t", strconv.Itoa(pid), "-D", b.TempDir()).CombinedOutput()
		if err != nil {
			b.Fatalf("cli dump: %v: %s", err, out)
		}
		return nil
	}
	rpcDump := func() error {
		d, err := os.Open(b.TempDir())
		if err != nil {
			return err
		}
		defer d.Close()
		return goCriu().Dump(&rpc.CriuOpts{Pid: ptr(int32(pid)), ImagesDirFd: ptr(int32(d.Fd())), LeaveRunning: ptr(true), LogFile: ptr("dump.log")}, nil)
	}
	// One dump to restore from, of a second copy that the dump kills.
	v := exec.Command(workloads["counter-static"], b.TempDir()+"/log")
	v.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	if err := v.Start(); err != nil {
		b.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	img := b.TempDir()
	if out, err := exec.Command(godwitBin, "dump", "-t", strconv.Itoa(v.Process.Pid), "-D", img).CombinedOutput(); err != nil {
		v.Process.Kill()
		b.Fatalf("dump: %v: %s", err, out)
	}
	v.Wait()
	vpid := v.Process.Pid
	reap := func() {
		unix.Kill(vpid, unix.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(vpid, &ws, 0, nil)
	}
	cliRestore := func() error {
		defer reap()
		out, err := exec.Command(godwitBin, "restore", "-d", "-D", img).CombinedOutput()
		if err != nil {
			b.Fatalf("cli restore: %v: %s", err, out)
		}
		return nil
	}
	rpcRestore := func() error {
		defer reap()
		d, err := os.Open(img)
		if err != nil {
			return err
		}
		defer d.Close()
		return goCriu().Restore(&rpc.CriuOpts{ImagesDirFd: ptr(int32(d.Fd())), LogFile: ptr("restore.log")}, nil)
	}
	var cd, rd, cr, rr []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cd = append(cd, timeIt(cliDump))
		rd = append(rd, timeIt(rpcDump))
		cr = append(cr, timeIt(cliRestore))
		rr = append(rr, timeIt(rpcRestore))
	}
	b.StopTimer()
	med := func(d []time.Duration) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[len(s)/2]) / float64(time.Millisecond)
	}
	b.ReportMetric(med(cd), "cli-dump-ms")
	b.ReportMetric(med(rd), "rpc-dump-ms")
	b.ReportMetric(med(rd)-med(cd), "rpc-added-dump-ms")
	b.ReportMetric(med(cr), "cli-restore-ms")
	b.ReportMetric(med(rr), "rpc-restore-ms")
	b.ReportMetric(med(rr)-med(cr), "rpc-added-restore-ms")
	b.ReportMetric(med(rd)/med(cd), "rpc/cli-dump")
	b.ReportMetric(med(rr)/med(cr), "rpc/cli-restore")
}
