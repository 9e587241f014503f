//go:build integration

package kubernetes

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// A control plane is etcd plus one or more kube-apiservers on loopback,
// started by hand (not envtest) so a test can stop an API server and start
// it again on the same port with the same certificates: envtest
// regenerates both on restart.

// startTimeout bounds an API server's start: 5–8 s on an idle 2-core
// machine, more when several start at once under a loaded CI.
const startTimeout = 90 * time.Second

// Static tokens (--token-auth-file). The tributary user is the
// ServiceAccount of deploy/kubernetes/rbac.yaml, so the tests run the
// source with exactly the RBAC that manifest grants.
const (
	adminToken     = "admin-token"
	tributaryToken = "tributary-token"
	tributaryUser  = "system:serviceaccount:tributary:tributary"
	nobodyToken    = "nobody-token"
	nobodyUser     = "nobody"
)

type binaries struct{ apiserver, etcd string }

func peerBinaries(t testing.TB) binaries {
	t.Helper()
	return binaries{
		apiserver: filepath.Join(harness.Peer(t, "k8s"), "kube-apiserver"),
		etcd:      filepath.Join(harness.Peer(t, "etcd"), "etcd"),
	}
}

// proc is a peer process whose output goes to a log file (no copying
// goroutines; one goroutine waits for it and ends with it).
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startProc(name, bin, logPath string, args ...string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fmt.Fprintf(f, "=== %s %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// If the test binary dies, so do its peers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill stops the process at once, as a crash would.
func (p *proc) kill() {
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// tail is the end of the process's log, for failure messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// cluster is one etcd with its API servers.
type cluster struct {
	name    string
	dir     string
	bins    binaries
	etcd    *proc
	etcdURL string
	caPEM   []byte
	servers []*apiserver
}

// apiserver is one kube-apiserver process of a cluster.
type apiserver struct {
	c    *cluster
	idx  int
	port int
	proc *proc
}

// newCluster starts etcd and n API servers sharing it (n=2 gives a test an
// API server to make changes through while the other one is down). It
// returns when every API server is ready; t.Cleanup stops them all.
func newCluster(t testing.TB, bins binaries, name string, n int) (*cluster, error) {
	dir, err := os.MkdirTemp("", "tributary-k8s-"+name+"-")
	if err != nil {
		return nil, err
	}
	c := &cluster{name: name, dir: dir, bins: bins}
	t.Cleanup(func() {
		c.stop()
		if !t.Failed() {
			os.RemoveAll(dir)
		} else {
			t.Logf("cluster %s: logs kept in %s", name, dir)
		}
	})
	if err := c.writeCredentials(); err != nil {
		return nil, err
	}
	ports := harness.FreePortNumbers(t, 2)
	clientPort, peerPort := ports[0], ports[1]
	c.etcdURL = "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	c.etcd, err = startProc(name+"/etcd", bins.etcd, filepath.Join(dir, "etcd.log"),
		"--name", "default", "--data-dir", filepath.Join(dir, "etcd-data"),
		"--listen-client-urls", c.etcdURL, "--advertise-client-urls", c.etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL,
		"--unsafe-no-fsync", "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	for i := 0; i < n; i++ {
		a := &apiserver{c: c, idx: i, port: harness.FreePortNumbers(t, 1)[0]}
		c.servers = append(c.servers, a)
		if err := a.startProc(); err != nil {
			return nil, err
		}
	}
	for _, a := range c.servers {
		if err := a.waitReady(); err != nil {
			return nil, err
		}
	}
	if err := c.applyRBAC(); err != nil {
		return nil, fmt.Errorf("cluster %s: applying deploy/kubernetes/rbac.yaml: %w", name, err)
	}
	return c, nil
}

// stop kills everything: the state is thrown away, so a graceful stop
// (which waits for clients' open watches) would only cost time.
func (c *cluster) stop() {
	for _, a := range c.servers {
		a.proc.kill()
	}
	c.etcd.kill()
}

// writeCredentials makes a CA, a serving certificate for 127.0.0.1, the
// service account signing key and the static token file.
func (c *cluster) writeCredentials() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tributary-test-ca-" + c.name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	c.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return err
	}
	tokens := strings.Join([]string{
		adminToken + ",admin,admin,system:masters",
		tributaryToken + "," + tributaryUser + ",tributary-uid,\"system:serviceaccounts,system:serviceaccounts:tributary\"",
		nobodyToken + "," + nobodyUser + ",nobody-uid",
	}, "\n") + "\n"
	files := map[string][]byte{
		"ca.crt":      c.caPEM,
		"serving.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"serving.key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		"sa.key":      pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saDER}),
		"tokens.csv":  []byte(tokens),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(c.dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (a *apiserver) url() string { return "https://127.0.0.1:" + strconv.Itoa(a.port) }

func (a *apiserver) args() []string {
	d := a.c.dir
	return []string{
		"--etcd-servers=" + a.c.etcdURL,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(a.port),
		// Both are needed: the first alone refuses to start, and without
		// them the default kubernetes EndpointSlice carries the host's
		// non-loopback address.
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(d, "certs-"+strconv.Itoa(a.idx)),
		"--tls-cert-file=" + filepath.Join(d, "serving.crt"),
		"--tls-private-key-file=" + filepath.Join(d, "serving.key"),
		"--token-auth-file=" + filepath.Join(d, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://127.0.0.1:" + strconv.Itoa(a.port),
		"--service-account-key-file=" + filepath.Join(d, "sa.key"),
		"--service-account-signing-key-file=" + filepath.Join(d, "sa.key"),
		// Room for the benchmark's 2,000 ClusterIPs; dual-stack, so that
		// GetProfile by a ClusterIP is tested with IPv6 and dual-stack
		// Services too (Services stay IPv4 unless they ask).
		"--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/108",
		// No controller-manager creates default service accounts.
		"--disable-admission-plugins=ServiceAccount",
		"--profiling=false",
	}
}

func (a *apiserver) startProc() error {
	p, err := startProc(fmt.Sprintf("%s/kube-apiserver-%d", a.c.name, a.idx), a.c.bins.apiserver,
		filepath.Join(a.c.dir, fmt.Sprintf("apiserver-%d.log", a.idx)), a.args()...)
	if err != nil {
		return err
	}
	a.proc = p
	return nil
}

// start starts the API server (again, after stop) and waits until ready.
func (a *apiserver) start() error {
	if err := a.startProc(); err != nil {
		return err
	}
	return a.waitReady()
}

// crash kills the API server. (Its graceful stop keeps the process alive
// for up to a minute while clients hold watches open, though it stops
// listening at once.)
func (a *apiserver) crash() { a.proc.kill() }

func (a *apiserver) waitReady() error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(a.c.caPEM)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(startTimeout)
	for {
		req, _ := http.NewRequest("GET", a.url()+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if a.proc.exited() {
			return fmt.Errorf("%s exited at start:\n%s", a.proc.name, a.proc.tail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v:\n%s", a.proc.name, startTimeout, a.proc.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// restConfig is an admin client config for this API server.
func (a *apiserver) restConfig() *rest.Config {
	return &rest.Config{
		Host:            a.url(),
		BearerToken:     adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: a.c.caPEM},
		QPS:             -1, // no client-side throttling: the tests and the benchmark drive load on purpose
		Timeout:         30 * time.Second,
	}
}

// admin is an admin client of the cluster's last API server (the one a
// test keeps up while it stops the first).
func (c *cluster) admin(t testing.TB) *k8s.Clientset {
	t.Helper()
	cs, err := k8s.NewForConfig(c.servers[len(c.servers)-1].restConfig())
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// kubeconfig writes a kubeconfig for the first API server with the given
// token and returns its path.
func (c *cluster) kubeconfig(t testing.TB, dir, token string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[c.name] = &clientcmdapi.Cluster{Server: c.servers[0].url(), CertificateAuthorityData: c.caPEM}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[c.name] = &clientcmdapi.Context{Cluster: c.name, AuthInfo: "user"}
	cfg.CurrentContext = c.name
	path := filepath.Join(dir, c.name+"-"+strconv.Itoa(len(token))+strings.TrimSuffix(token, "-token")+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// applyRBAC creates every object of deploy/kubernetes/rbac.yaml.
func (c *cluster) applyRBAC() error {
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "kubernetes", "rbac.yaml"))
	if err != nil {
		return err
	}
	cs, err := k8s.NewForConfig(c.servers[len(c.servers)-1].restConfig())
	if err != nil {
		return err
	}
	ctx := context.Background()
	dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := dec.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			return err
		}
		if err := create(ctx, cs, obj); err != nil {
			return err
		}
	}
}

func create(ctx context.Context, cs *k8s.Clientset, obj runtime.Object) error {
	var err error
	switch o := obj.(type) {
	case *corev1.Namespace:
		_, err = cs.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
	case *corev1.ServiceAccount:
		_, err = cs.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.ClusterRole:
		_, err = cs.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.ClusterRoleBinding:
		_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
	default:
		return fmt.Errorf("unexpected object %T in rbac.yaml", obj)
	}
	return err
}
