//go:build integration

package operator

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test re-executes itself inside a network namespace of its own; this
// says it is that run.
const (
	nsRoleEnv = "TRIBUTARY_TEST_NETNS_ROLE"
	roleRules = "rules" // set up the namespace, apply the rules, check them
)

// The proxy's user in docs/bare-metal.md's rules, and the remote end of
// the namespace's veth pair.
const (
	proxyUID = 2102
	remote   = "10.99.0.2:8080"
)

// TestBareMetalInterception runs the iptables rules of docs/bare-metal.md
// (step 5, "Interception") as written, in a network namespace made for the
// test, and checks their outbound half: an application's connection to a
// remote address reaches the proxy's outbound port 4140 with its original
// destination readable (SO_ORIGINAL_DST, as the proxy reads it), while the
// proxy's own connection (its uid) goes out untouched.
func TestBareMetalInterception(t *testing.T) {
	if os.Getenv(nsRoleEnv) == roleRules {
		checkInterception(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("a network namespace and iptables need root (CI runs as root)")
	}
	// iptables and ip live in sbin, which a login shell's PATH may leave out.
	t.Setenv("PATH", os.Getenv("PATH")+":/usr/sbin:/sbin")
	for _, tool := range []string{"unshare", "iptables", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (make test-integration installs iptables and iproute2): %v", tool, err)
		}
	}
	cmd := exec.Command("unshare", "--net", os.Args[0], "-test.run=^TestBareMetalInterception$", "-test.v")
	cmd.Env = append(os.Environ(), nsRoleEnv+"="+roleRules)
	out, err := cmd.CombinedOutput()
	t.Logf("in the namespace:\n%s", out)
	if err != nil {
		t.Fatalf("the rules failed their check in a network namespace: %v", err)
	}
}

// checkInterception runs inside the namespace.
func checkInterception(t *testing.T) {
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "v0", "type", "veth", "peer", "name", "v1"},
		{"link", "set", "v0", "up"},
		{"link", "set", "v1", "up"},
		{"addr", "add", "10.99.0.1/24", "dev", "v0"}, // 10.99.0.2 is a remote host nobody answers for
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	rules := interceptionRules(t)
	if out, err := exec.Command("bash", "-e", "-c", rules).CombinedOutput(); err != nil {
		t.Fatalf("the rules of docs/bare-metal.md:\n%s\nfailed: %v: %s", rules, err, out)
	}

	proxy, err := net.Listen("tcp", "0.0.0.0:4140") // the proxy's outbound port
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()

	// An application (any uid but the proxy's; root here) dials a remote
	// address: the proxy gets the connection, with the original destination.
	if !dialAs(t, 0) {
		t.Fatal("an application's connection to " + remote + " was not taken by the proxy's 4140")
	}
	c := accept(t, proxy)
	orig := originalDst(t, c)
	c.Close()
	if orig.String() != remote {
		t.Fatalf("SO_ORIGINAL_DST = %v, want %s", orig, remote)
	}
	// The proxy's own connection passes the redirect by its uid: it goes out
	// to the (absent) remote host, so it fails, and the proxy's port gets
	// nothing.
	if before := uidRulePackets(t); before != "0" {
		t.Fatalf("the proxy-uid rule matched %s packets before the proxy dialled", before)
	}
	if dialAs(t, proxyUID) {
		t.Fatal("the proxy's own connection was answered: it was redirected")
	}
	if n := uidRulePackets(t); n == "0" {
		t.Fatal("the proxy's own connection did not pass through its uid rule")
	}
	proxy.(*net.TCPListener).SetDeadline(time.Now().Add(200 * time.Millisecond))
	if c, err := proxy.Accept(); err == nil {
		c.Close()
		t.Fatal("the proxy's own connection reached 4140")
	}
}

// dialAs connects to the remote address from a shell running as uid and
// reports whether the connection was made (bash's /dev/tcp; 2 s at most).
func dialAs(t *testing.T, uid int) bool {
	t.Helper()
	cmd := exec.Command("timeout", "2", "setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups",
		"bash", "-c", "exec 3<>/dev/tcp/"+strings.Replace(remote, ":", "/", 1))
	return cmd.Run() == nil
}

// uidRulePackets is the packet count of the rule that lets the proxy's own
// connections pass.
func uidRulePackets(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("iptables", "-t", "nat", "-L", "PROXY_INIT_OUTPUT", "-v", "-x", "-n").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, fmt.Sprintf("owner UID match %d", proxyUID)) {
			return strings.Fields(line)[0]
		}
	}
	t.Fatalf("no uid %d rule in PROXY_INIT_OUTPUT:\n%s", proxyUID, out)
	return ""
}

func accept(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("nothing reached %s: %v", ln.Addr(), err)
	}
	return c
}

// originalDst reads SO_ORIGINAL_DST, as the proxy does on a redirected
// connection.
func originalDst(t *testing.T, c net.Conn) netip.AddrPort {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mreq *syscall.IPv6Mreq
	var serr error
	if err := raw.Control(func(fd uintptr) {
		const soOriginalDst = 80
		mreq, serr = syscall.GetsockoptIPv6Mreq(int(fd), syscall.SOL_IP, soOriginalDst)
	}); err != nil || serr != nil {
		t.Fatalf("SO_ORIGINAL_DST: %v %v", err, serr)
	}
	b := mreq.Multiaddr // a sockaddr_in: family, port, address
	port := uint16(b[2])<<8 | uint16(b[3])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}), port)
}

// interceptionRules is the shell block of docs/bare-metal.md's
// "Interception" item.
func interceptionRules(t *testing.T) string {
	t.Helper()
	f, err := os.Open(filepath.Join(repo(t), "docs", "bare-metal.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b strings.Builder
	seen, in := false, false
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := sc.Text()
		switch {
		case strings.Contains(line, "**Interception**"):
			seen = true
		case seen && !in && strings.TrimSpace(line) == "```sh":
			in = true
		case in && strings.TrimSpace(line) == "```":
			return b.String()
		case in:
			b.WriteString(strings.TrimSpace(line) + "\n")
		}
	}
	t.Fatal("docs/bare-metal.md has no shell block under **Interception**")
	return ""
}
