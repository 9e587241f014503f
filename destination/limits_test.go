package destination

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// rawH2 is an HTTP/2 client that ignores the server's
// SETTINGS_MAX_HEADER_LIST_SIZE, as a hostile client would (grpc-go's own
// client refuses to send an oversized header list, so it cannot show that
// the server refuses one).
type rawH2 struct {
	t    *testing.T
	conn net.Conn
	fr   *http2.Framer
	// settings the server announced.
	settings map[http2.SettingID]uint32
}

func dialRawH2(t *testing.T, addr string) *rawH2 {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawH2{t: t, conn: conn, fr: http2.NewFramer(conn, conn), settings: map[http2.SettingID]uint32{}}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	// The server's SETTINGS come first; ack them.
	f := c.read()
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		t.Fatalf("first frame %v, want the server's SETTINGS", f)
	}
	_ = sf.ForeachSetting(func(s http2.Setting) error { c.settings[s.ID] = s.Val; return nil })
	if err := c.fr.WriteSettingsAck(); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *rawH2) read() http2.Frame {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(waitFor))
	f, err := c.fr.ReadFrame()
	if err != nil {
		c.t.Fatalf("reading a frame: %v", err)
	}
	return f
}

// get sends a Get for path on stream id whose header list carries an extra
// metadata entry of extra bytes, split into HEADERS and CONTINUATION
// frames of at most 16 KiB. A write error (the server closed the
// connection) is returned.
func (c *rawH2) get(id uint32, path string, extra int) error {
	c.t.Helper()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/io.linkerd.proxy.destination.Destination/Get"},
		{Name: ":authority", Value: "tributary"},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
		{Name: "x-padding", Value: strings.Repeat("a", extra)},
	} {
		if err := enc.WriteField(f); err != nil {
			c.t.Fatal(err)
		}
	}
	const chunk = 16 << 10
	b := block.Bytes()
	first := b[:min(chunk, len(b))]
	b = b[len(first):]
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: len(b) == 0}); err != nil {
		return err
	}
	for len(b) > 0 {
		n := min(chunk, len(b))
		if err := c.fr.WriteContinuation(id, n == len(b), b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	msg, err := proto.Marshal(&pb.GetDestination{Path: path})
	if err != nil {
		c.t.Fatal(err)
	}
	data := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(data[1:], uint32(len(msg)))
	return c.fr.WriteData(id, true, append(data, msg...))
}

// until reads frames until one on stream id that is a RST_STREAM or a
// HEADERS, and returns it; a GOAWAY ends the wait too, and the connection's
// end returns nil.
func (c *rawH2) until(id uint32) http2.Frame {
	c.t.Helper()
	for {
		_ = c.conn.SetReadDeadline(time.Now().Add(waitFor))
		f, err := c.fr.ReadFrame()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.t.Fatalf("no answer on stream %d", id)
			}
			c.t.Logf("connection ended: %v", err)
			return nil
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			return f
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return f
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				return f
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = c.fr.WritePing(true, f.Data)
			}
		}
	}
}

// TestOversizedMetadataIsRefusedForFree: a Get whose header list is over
// the server's limit never becomes a stream: no handler runs, no stream
// slot or admission token is taken. With 1 MiB of metadata the transport
// (x/net/http2's framer) stops decoding at the limit and closes the
// connection at the next CONTINUATION frame; a header list just over the
// limit, in one HEADERS frame, gets RST_STREAM and the connection goes on
// serving. A request with 8 KiB of metadata, more than any proxy sends, is
// served.
func TestOversizedMetadataIsRefusedForFree(t *testing.T) {
	store := cache.New()
	srv := NewServer(Options{Store: store, Metrics: nil})
	var calls atomic.Int64
	g := grpc.NewServer(append(append(ServerOptions(), ConnectionLimits(0, 0)...),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			calls.Add(1)
			return handler(srv, ss)
		}))...)
	srv.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(srv.Listener(ln)) }()
	t.Cleanup(func() {
		srv.Drain()
		g.Stop()
		srv.Wait()
	})
	if _, err := store.Apply("p", []discovery.Group{group("f", "web.demo", 80, "10.0.0.1:80")}); err != nil {
		t.Fatal(err)
	}

	c := dialRawH2(t, ln.Addr().String())
	if got := c.settings[http2.SettingMaxHeaderListSize]; got != DefaultMaxHeaderBytes {
		t.Errorf("server announces SETTINGS_MAX_HEADER_LIST_SIZE %d, want %d", got, DefaultMaxHeaderBytes)
	}
	if got := c.settings[http2.SettingMaxConcurrentStreams]; got != DefaultMaxStreamsPerConnection {
		t.Errorf("server announces SETTINGS_MAX_CONCURRENT_STREAMS %d, want %d", got, DefaultMaxStreamsPerConnection)
	}

	if err := c.get(1, "web.demo:80", 1<<20); err != nil {
		t.Logf("1 MiB of metadata: the server closed the connection while it was sent: %v", err)
	} else {
		switch f := c.until(1).(type) {
		case nil, *http2.GoAwayFrame, *http2.RSTStreamFrame:
		default:
			t.Fatalf("1 MiB of metadata: the server answered %v, want the stream reset or the connection closed", f)
		}
	}

	// Just over the limit, in one HEADERS frame (hpack's Huffman code
	// packs the padding into about 10 KB).
	c = dialRawH2(t, ln.Addr().String())
	if err := c.get(1, "web.demo:80", DefaultMaxHeaderBytes-250); err != nil {
		t.Fatal(err)
	}
	if f, ok := c.until(1).(*http2.RSTStreamFrame); !ok {
		t.Fatalf("%d bytes of metadata: the server answered %v, want RST_STREAM", DefaultMaxHeaderBytes-250, f)
	}
	if n, open := calls.Load(), srv.open.Load(); n != 0 || open != 0 {
		t.Fatalf("after oversized requests: %d handler calls, %d open streams; want none", n, open)
	}

	// The same connection still serves, with room for real metadata.
	if err := c.get(3, "web.demo:80", 8<<10); err != nil {
		t.Fatal(err)
	}
	f, ok := c.until(3).(*http2.MetaHeadersFrame)
	if !ok {
		t.Fatalf("8 KiB of metadata: %v, want response headers", f)
	}
	if st := f.PseudoValue("status"); st != "200" {
		t.Fatalf("8 KiB of metadata: :status %q", st)
	}
	deadline := time.Now().Add(waitFor)
	for calls.Load() != 1 || srv.open.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("8 KiB of metadata: %d handler calls, %d open streams; want 1 and 1", calls.Load(), srv.open.Load())
		}
		time.Sleep(time.Millisecond)
	}
}
