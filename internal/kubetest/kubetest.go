// Package kubetest runs a real kube-apiserver and etcd for tests, on
// 127.0.0.1 with free ports: Leases there behave as in a cluster
// (resourceVersion conflicts included), which the fake clientset's do not.
//
// The binaries come from the directory in $KVSYNC_KUBE_ASSETS (files etcd
// and kube-apiserver), which deploy/kubernetes/apiserver/assets.sh fills.
// Without it a test fails under CI ($CI set) and is skipped elsewhere.
package kubetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
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

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// AssetsEnv names the directory holding the etcd and kube-apiserver binaries.
const AssetsEnv = "KVSYNC_KUBE_ASSETS"

// BuildCommand builds the assets and prints the directory to use.
const BuildCommand = "bash deploy/kubernetes/apiserver/assets.sh  # then KVSYNC_KUBE_ASSETS=~/.cache/kvsync/kube-assets-v1.34.4"

// The static tokens' users.
const (
	// AdminUser is in system:masters: everything is allowed.
	AdminUser = "admin"
	// ServiceAccountUser is the identity of kvsync's service account in
	// the default namespace, with that account's groups, as a pod's token
	// would authenticate.
	ServiceAccountUser = "system:serviceaccount:default:kvsync"
)

// Options choose the API server's configuration.
type Options struct {
	// RBAC runs --authorization-mode=RBAC (with the default cluster
	// roles); otherwise AlwaysAllow.
	RBAC bool
}

// Server is a running etcd and kube-apiserver.
type Server struct {
	// URL is the API server's https address.
	URL string
	// AdminKubeconfig and ServiceAccountKubeconfig are kubeconfig files
	// authenticating as AdminUser and ServiceAccountUser.
	AdminKubeconfig, ServiceAccountKubeconfig string

	t         testing.TB
	dir       string
	apiArgs   []string
	apiBin    string
	api, etcd *proc
	adminTok  string
	caFile    string
}

// Assets returns the assets directory, or ends the test: t.Fatal under CI,
// t.Skip elsewhere.
func Assets(t testing.TB) string {
	t.Helper()
	dir := os.Getenv(AssetsEnv)
	if dir == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("$%s is not set: these tests need a real kube-apiserver and etcd; build them with: %s", AssetsEnv, BuildCommand)
		}
		t.Skipf("$%s is not set; to run these tests against a real kube-apiserver and etcd: %s", AssetsEnv, BuildCommand)
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("$%s=%s: %v (build the assets with: %s)", AssetsEnv, dir, err, BuildCommand)
		}
	}
	return dir
}

// Start runs etcd and the API server until the test ends, and waits for
// /readyz. Cleanup stops the API server before etcd.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	assets := Assets(t)
	dir := t.TempDir()
	s := &Server{t: t, dir: dir, apiBin: filepath.Join(assets, "kube-apiserver")}
	t.Cleanup(s.stop)

	clientPort, peerPort, apiPort := freePort(t), freePort(t), freePort(t)
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	s.etcd = s.spawn(filepath.Join(assets, "etcd"), "etcd.log",
		"--name=kubetest", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL, "--log-level=error")
	s.waitHTTP(etcdURL+"/health", nil, "etcd", "etcd.log")

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "sa.key")
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	s.adminTok = randomToken(t)
	saTok := randomToken(t)
	tokens := filepath.Join(dir, "tokens.csv")
	writeFile(t, tokens, []byte(fmt.Sprintf("%s,%s,admin-uid,\"system:masters\"\n%s,%s,kvsync-uid,\"system:serviceaccounts,system:serviceaccounts:default\"\n",
		s.adminTok, AdminUser, saTok, ServiceAccountUser)))
	mode := "AlwaysAllow"
	if o.RBAC {
		mode = "RBAC"
	}
	s.apiArgs = []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + keyFile,
		"--service-account-signing-key-file=" + keyFile,
		"--token-auth-file=" + tokens,
		"--authorization-mode=" + mode,
		"--service-cluster-ip-range=10.0.0.0/24",
	}
	s.URL = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	s.caFile = filepath.Join(dir, "certs", "apiserver.crt")
	s.StartAPIServer()
	s.AdminKubeconfig = s.kubeconfig("admin.kubeconfig", AdminUser, s.adminTok)
	s.ServiceAccountKubeconfig = s.kubeconfig("kvsync.kubeconfig", "kvsync", saTok)
	return s
}

// StartAPIServer starts the API server (again, on the same port, after
// StopAPIServer) and waits for /readyz.
func (s *Server) StartAPIServer() {
	s.t.Helper()
	if s.api != nil {
		s.t.Fatal("kubetest: the API server is running already")
	}
	s.api = s.spawn(s.apiBin, "kube-apiserver.log", s.apiArgs...)
	s.waitHTTP(s.URL+"/readyz", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+s.adminTok) }, "kube-apiserver", "kube-apiserver.log")
}

// StopAPIServer stops the API server: from then on its port refuses
// connections, as an API server a pod cannot reach. etcd keeps running.
func (s *Server) StopAPIServer() {
	s.t.Helper()
	if s.api == nil {
		return
	}
	terminate(s.api)
	s.api = nil
}

// KillAPIServer kills the API server with SIGKILL: unlike StopAPIServer's
// graceful stop, during which it still answers for a while, its port
// refuses connections from that instant, as a cut network would.
func (s *Server) KillAPIServer() {
	s.t.Helper()
	if s.api == nil {
		return
	}
	s.api.cmd.Process.Kill() //nolint:errcheck // it may have exited already
	<-s.api.exited
	s.api = nil
}

// AdminConfig is a client config authenticating as AdminUser.
func (s *Server) AdminConfig() *rest.Config {
	s.t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", s.AdminKubeconfig)
	if err != nil {
		s.t.Fatal(err)
	}
	return cfg
}

func (s *Server) stop() {
	// The API server first: without etcd it retries for many seconds.
	s.StopAPIServer()
	if s.etcd != nil {
		terminate(s.etcd)
		s.etcd = nil
	}
}

// proc is a started process and the channel closed when it exited.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

func (s *Server) spawn(bin, logName string, args ...string) *proc {
	s.t.Helper()
	logf, err := os.OpenFile(filepath.Join(s.dir, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so a ^C of the test run does not race the
	// ordered shutdown; Pdeathsig ends it with the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("kubetest: starting %s: %v", bin, err)
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		cmd.Wait() //nolint:errcheck // its exit is seen through exited
		close(p.exited)
	}()
	return p
}

// terminate sends SIGTERM and waits up to 20 s, then kills.
func terminate(p *proc) {
	p.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck // it may have exited already
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill() //nolint:errcheck
		<-p.exited
	}
}

// waitHTTP polls url until it answers 200, for up to 60 s (a busy
// machine), or ends the test with the tail of the component's log.
func (s *Server) waitHTTP(url string, auth func(*http.Request), what, logName string) {
	s.t.Helper()
	var client *http.Client
	defer func() {
		if client != nil {
			client.CloseIdleConnections()
		}
	}()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		if client == nil {
			var err error
			if client, err = s.httpClient(url); err != nil {
				last = err.Error()
				time.Sleep(200 * time.Millisecond)
				continue
			}
		}
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
		if auth != nil {
			auth(req)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(s.dir, logName))
	if len(log) > 4000 {
		log = log[len(log)-4000:]
	}
	s.t.Fatalf("kubetest: %s not ready at %s within 60 s (last: %s); its log ends:\n%s", what, url, last, log)
}

// httpClient is a client for url; for the API server it trusts the
// certificate the API server generates in its cert directory at start,
// so it fails until that file is there.
func (s *Server) httpClient(url string) (*http.Client, error) {
	if !strings.HasPrefix(url, "https:") {
		return &http.Client{Timeout: 2 * time.Second}, nil
	}
	ca, err := os.ReadFile(s.caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s: no certificate yet", s.caFile)
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}, nil
}

func (s *Server) kubeconfig(name, user, token string) string {
	s.t.Helper()
	ca, err := os.ReadFile(s.caFile)
	if err != nil {
		s.t.Fatal(err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: s.URL, CertificateAuthorityData: ca}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "kubetest"
	p := filepath.Join(s.dir, name)
	if err := clientcmd.WriteToFile(*cfg, p); err != nil {
		s.t.Fatal(err)
	}
	return p
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func randomToken(t testing.TB) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", b)
}

func writeFile(t testing.TB, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
