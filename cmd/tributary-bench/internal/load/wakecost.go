package load

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// WakeCost measures what one small write over loopback TCP costs the writing
// thread on this machine, to a reader process that is asleep (each write
// has to wake it: what a server pays per change when each change goes to a
// different, otherwise idle, client) and to one that is kept busy by
// back-to-back writes. On virtual machines waking another CPU can cost tens
// of microseconds; that cost is a floor under the server's CPU per change
// that no server code can remove, so the steady workload's CPU figures are
// to be read against it.
//
// It also measures what a Go process is charged for waking on a timer and
// doing nothing: what the server pays to take in a change that arrives
// while it sleeps. The sum of that and a write to a sleeping reader is the
// least CPU an isolated change can cost here (isolated_change_floor_us).
//
// The reader is this executable re-run with ReaderArg; main must call
// RunWakeReader when it sees it.
func WakeCost(writes int, size int, gap time.Duration) (*Result, error) {
	r := newResult("wakecost")
	return r, measureWakeCost(r, writes, size, gap)
}

func measureWakeCost(r *Result, writes int, size int, gap time.Duration) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	reader := exec.Command(exe, ReaderArg, ln.Addr().String())
	reader.Stderr = os.Stderr
	if err := reader.Start(); err != nil {
		return err
	}
	defer reader.Wait()
	conn, err := ln.Accept()
	if err != nil {
		reader.Process.Kill()
		return err
	}
	defer conn.Close()
	conn.(*net.TCPConn).SetNoDelay(true)

	// Before the thread is locked: a locked thread makes the runtime hand
	// its P over at every sleep, which the server's goroutines never cause.
	idle := idleWake(writes, gap)

	// One OS thread for the writes, so that its CPU clock is theirs.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	msg := make([]byte, size)
	measure := func(gap time.Duration) (float64, error) {
		var spent time.Duration
		for range writes {
			t0 := threadCPU()
			if _, err := conn.Write(msg); err != nil {
				return 0, err
			}
			spent += threadCPU() - t0
			if gap > 0 {
				time.Sleep(gap)
			}
		}
		return float64(spent.Nanoseconds()) / float64(writes) / 1e3, nil
	}
	asleep, err := measure(gap)
	if err != nil {
		return err
	}
	busy, err := measure(0)
	if err != nil {
		return err
	}
	r.Set("write_bytes", size)
	r.Set("writes", writes)
	r.Set("gap_ms", float64(gap.Microseconds())/1e3)
	r.Set("write_to_sleeping_reader_us", asleep)
	r.Set("write_to_busy_reader_us", busy)
	r.Set("idle_wake_us", idle)
	r.Set("isolated_change_floor_us", idle+asleep)
	return nil
}

// floorRounds and floorWrites: the floor beside a workload is measured in
// floorRounds windows of floorWrites writes each, and each figure is the
// median of the windows. On this 2-vCPU VM one window's cost of a write to
// a sleeping reader ranged from 56 to 349 µs from one minute to the next
// (whether the reader wakes on the writer's vCPU or the other one, the
// hypervisor's doing): one window made the per-run ratio swing from 1 to 3
// for the same server figures.
const (
	floorRounds = 5
	floorWrites = 400
)

// measureWakeFloor is measureWakeCost in rounds windows: each figure is their
// median, and isolated_change_floor_us_min and _max give the spread.
func measureWakeFloor(rounds, writes, size int, gap time.Duration) (*Result, error) {
	keys := []string{"write_to_sleeping_reader_us", "write_to_busy_reader_us", "idle_wake_us", "isolated_change_floor_us"}
	samples := map[string][]float64{}
	for range rounds {
		w := newResult("wakecost")
		if err := measureWakeCost(w, writes, size, gap); err != nil {
			return nil, err
		}
		for _, k := range keys {
			if v, ok := w.Get(k); ok {
				samples[k] = append(samples[k], v.(float64))
			}
		}
	}
	out := newResult("wakecost")
	out.Set("floor_rounds", rounds)
	for _, k := range keys {
		v := samples[k]
		slices.Sort(v)
		if len(v) == 0 {
			continue
		}
		out.Set(k, v[len(v)/2])
		if k == "isolated_change_floor_us" {
			out.Set(k+"_min", v[0])
			out.Set(k+"_max", v[len(v)-1])
		}
	}
	return out, nil
}

// idleWake is the CPU, in microseconds, this whole process is charged per
// tick of a ticker of period gap that wakes a goroutine which does nothing
// else: the kernel's and the Go runtime's cost of waking from idle.
func idleWake(n int, gap time.Duration) float64 {
	if gap <= 0 {
		gap = time.Millisecond
	}
	t := time.NewTicker(gap)
	defer t.Stop()
	<-t.C // the first tick may come from before the measurement
	start := selfCPU()
	for range n {
		<-t.C
	}
	return (selfCPU() - start) / float64(n) * 1e6
}

// ReaderArg is the argument that makes this executable WakeCost's reader.
const ReaderArg = "__wakecost-reader"

// RunWakeReader connects to addr and reads until the writer closes.
func RunWakeReader(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = io.Copy(io.Discard, bufio.NewReader(c))
	return err
}

func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		panic(fmt.Sprintf("clock_gettime: %v", err)) // Linux always has it
	}
	return time.Duration(ts.Nano())
}
