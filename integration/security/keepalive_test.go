//go:build integration

package security

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// TestPingFloodGetsGoAway is fault matrix item 8, abusive side: a raw HTTP/2
// client pings every second, ten times faster than server.keepalive.min_ping_interval
// allows. The server answers that connection GOAWAY ENHANCE_YOUR_CALM
// "too_many_pings" and closes it; a well-behaved client's stream on another
// connection is not affected.
func TestPingFloodGetsGoAway(t *testing.T) {
	dir := t.TempDir()
	writeServices(t, dir, "10.1.0.1:8080")
	s := harness.Start(t, dir, fileSource)
	good := s.Get("web.demo:8080")
	if got := good.Next(); got != "add:10.1.0.1:8080" {
		t.Fatalf("well-behaved client: %s", got)
	}

	conn, err := net.Dial("tcp", s.API)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	var wmu sync.Mutex // the framer's writes come from two goroutines
	fr := http2.NewFramer(conn, conn)
	write := func(f func() error) error { wmu.Lock(); defer wmu.Unlock(); return f() }
	if err := write(func() error { return fr.WriteSettings() }); err != nil {
		t.Fatal(err)
	}
	goaway := make(chan *http2.GoAwayFrame, 1)
	closed := make(chan error, 1)
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				closed <- err
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					write(fr.WriteSettingsAck)
				}
			case *http2.GoAwayFrame:
				select {
				case goaway <- f:
				default: // only the first one matters
				}
			}
		}
	}()
	var pings atomic.Int32
	stop := make(chan struct{})
	pinger := make(chan struct{})
	go func() {
		defer close(pinger)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			n := pings.Add(1)
			if write(func() error { return fr.WritePing(false, [8]byte{byte(n)}) }) != nil {
				return
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { close(stop); <-pinger }()

	var ga *http2.GoAwayFrame
	select {
	case ga = <-goaway:
	case err := <-closed:
		t.Fatalf("connection closed without GOAWAY after %d pings: %v", pings.Load(), err)
	case <-time.After(2 * waitFor):
		t.Fatalf("no GOAWAY after %d pings a second apart", pings.Load())
	}
	if ga.ErrCode != http2.ErrCodeEnhanceYourCalm || string(ga.DebugData()) != "too_many_pings" {
		t.Fatalf("GOAWAY %v %q, want ENHANCE_YOUR_CALM too_many_pings", ga.ErrCode, ga.DebugData())
	}
	t.Logf("GOAWAY %v %q after %d pings", ga.ErrCode, ga.DebugData(), pings.Load())
	select {
	case <-closed:
	case <-time.After(waitFor):
		t.Fatal("the abusive connection stayed open after GOAWAY")
	}

	// The other client's stream is alive and current.
	writeServices(t, dir, "10.1.0.1:8080", "10.1.0.2:8080")
	if got := good.Next(); got != "add:10.1.0.2:8080" {
		t.Fatalf("well-behaved client after the flood: %s", got)
	}
}

// TestHalfOpenConnectionReaped is fault matrix item 8, dead side: a client's
// network path goes silent (a frozen forwarder keeps both sockets open and
// drops everything, as a vanished peer behind a NAT does). Server keepalive
// (time 1s, timeout 1s here) finds the dead connection, closes it and ends
// its stream: the open-stream gauge goes back down.
func TestHalfOpenConnectionReaped(t *testing.T) {
	dir := t.TempDir()
	writeServices(t, dir, "10.1.0.1:8080")
	s := harness.Start(t, dir, serverKeys("keepalive:", "  time: 1s", "  timeout: 1s")+fileSource)
	fwd := newFreezer(t, s.API)
	st := openGet(t, fwd.addr, insecure.NewCredentials(), "web.demo:8080")
	if got, err := st.next(); err != nil || got != "add:10.1.0.1:8080" {
		t.Fatalf("through the forwarder: %q %v", got, err)
	}
	eventually(t, "one Get stream open", func() bool {
		return metric(t, s, "tributary_streams", `{method="Get"}`) == 1
	})
	// Idle for a few keepalive periods: the client answers pings, nothing
	// is reaped.
	time.Sleep(3 * time.Second)
	if got := metric(t, s, "tributary_streams", `{method="Get"}`); got != 1 {
		t.Fatalf("a healthy idle connection was reaped: %v streams", got)
	}

	fwd.freeze()
	frozen := time.Now()
	select {
	case <-fwd.serverClosed:
		t.Logf("server closed the silent connection %v after the freeze", time.Since(frozen).Round(100*time.Millisecond))
	case <-time.After(waitFor):
		// A hang guard, and far below what the default keepalive (30s +
		// 10s) would take: a server ignoring server.keepalive fails here.
		t.Fatal("the server did not close the silent connection")
	}
	eventually(t, "the stream of the dead connection ended", func() bool {
		return metric(t, s, "tributary_streams", `{method="Get"}`) == 0
	})
}

// freezer forwards one TCP connection to target until frozen; then it
// keeps both sockets open and drops whatever arrives from either side,
// reporting when the target closes its end.
type freezer struct {
	addr         string
	frozen       atomic.Bool
	serverClosed chan struct{}
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{addr: ln.Addr().String(), serverClosed: make(chan struct{})}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		client, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", target)
		if err != nil {
			client.Close()
			return
		}
		mu.Lock()
		conns = append(conns, client, server)
		mu.Unlock()
		wg.Go(func() { f.pipe(client, server); client.Close() })
		f.pipe(server, client)
		close(f.serverClosed) // the target closed (or reset) its end
		server.Close()
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return f
}

func (f *freezer) freeze() { f.frozen.Store(true) }

// pipe copies from src to dst until src ends; once frozen it reads and
// drops.
func (f *freezer) pipe(src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !f.frozen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil && !errors.Is(werr, net.ErrClosed) {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
