package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestRegisterUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"register"}, "usage: tributary register"},
		{[]string{"register", "--authority", "web.vm:8080"}, "usage: tributary register"},
		{[]string{"register", "--authority", "web.vm:8080", "--address", "web-1:8080"}, `"web-1" is not an IP address`},
		{[]string{"register", "--authority", "web.vm:8080", "--address", "10.0.0.1:8080", "--protocol", "udp"}, `--protocol "udp"`},
		{[]string{"register", "--authority", "web.vm:8080", "--address", "10.0.0.1:8080", "--label", "novalue"}, "want key=value"},
		{[]string{"registrations", "extra"}, ""},
	} {
		var out, errb bytes.Buffer
		if code := run(tc.args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2", tc.args, code)
		}
		if !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: stderr %q, want it to say %q", tc.args, errb.String(), tc.want)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"register", "--authority", "web.vm:8080", "--address", "10.0.0.1:8080", "--cert", "c.pem"}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "--cert, --key and --ca go together") {
		t.Errorf("a lone --cert: exit %d, %q", code, errb.String())
	}
}

func TestProbe(t *testing.T) {
	var fail atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if fail.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	if err := probe(ctx, srv.URL+"/healthz", time.Second); err != nil {
		t.Errorf("passing http check: %v", err)
	}
	fail.Store(true)
	if err := probe(ctx, srv.URL+"/healthz", time.Second); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("failing http check: %v", err)
	}
	if err := probe(ctx, "tcp://"+srv.Listener.Addr().String(), time.Second); err != nil {
		t.Errorf("tcp check: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	if err := probe(ctx, "tcp://"+closed, time.Second); err == nil {
		t.Error("tcp check of a closed port passed")
	}
	if err := probe(ctx, "udp://"+closed, time.Second); err == nil || !strings.Contains(err.Error(), "want http://") {
		t.Errorf("bad scheme: %v", err)
	}
}
