package ratelimit

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvsync/kvsync/internal/testkit"
	"github.com/kvsync/kvsync/kvapi"
	"github.com/kvsync/kvsync/metrics"
)

// countingTLSServer is an httptest TLS server that counts the connections
// clients open. A handshake that fails never reaches a handler, so
// connections, not requests, are what tells one attempt from six.
func countingTLSServer(t *testing.T, cert *tls.Certificate) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, `{"success":true,"errors":[],"messages":[],"result":null}`)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	// The refused handshakes are the point of the test, not server errors.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if cert != nil {
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, &conns
}

// expiredCert is a self-signed certificate for 127.0.0.1 that expired
// yesterday.
func expiredCert(t *testing.T) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "expired"},
		NotBefore:             time.Now().Add(-48 * time.Hour),
		NotAfter:              time.Now().Add(-24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, leaf
}

func trusting(certs ...*x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// TestRetryNeverRetriesUntrustedCertificate: a server whose certificate
// fails verification gets exactly one connection through the retry
// decorator, and the error says the certificate is not trusted. Retrying
// cannot help (the next handshake meets the same certificate) and would only
// delay the operator's diagnosis.
func TestRetryNeverRetriesUntrustedCertificate(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T) (base string, client *http.Client, conns *atomic.Int64)
	}{
		{"unknown authority", func(t *testing.T) (string, *http.Client, *atomic.Int64) {
			srv, n := countingTLSServer(t, nil)
			return srv.URL, trusting(), n
		}},
		{"name the certificate is not valid for", func(t *testing.T) (string, *http.Client, *atomic.Int64) {
			srv, n := countingTLSServer(t, nil)
			u, _ := url.Parse(srv.URL)
			// httptest's certificate names 127.0.0.1 and example.com, not localhost.
			return "https://localhost:" + u.Port(), trusting(srv.Certificate()), n
		}},
		{"expired", func(t *testing.T) (string, *http.Client, *atomic.Int64) {
			cert, leaf := expiredCert(t)
			srv, n := countingTLSServer(t, &cert)
			return srv.URL, trusting(leaf), n
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base, hc, conns := tc.setup(t)
			client, err := kvapi.New(kvapi.Options{BaseURL: base + "/client/v4", AccountID: "acct", Token: "tok", HTTPClient: hc})
			if err != nil {
				t.Fatal(err)
			}
			m := metrics.New(prometheus.NewRegistry(), "test")
			lim := fastLim(m)
			sl := &sleeps{}
			kv := Retry(Limit(client, lim), RetryPolicy{MaxAttempts: 6, Sleep: sl.Sleep}, lim, m, nil)

			err = kv.PutValue(context.Background(), "ns", "k", testkit.Bytes("payload"), kvapi.PutOptions{})
			if got := conns.Load(); got != 1 {
				t.Errorf("%d connection attempts, want exactly 1 (err: %v)", got, err)
			}
			if !errors.Is(err, kvapi.ErrCertificateNotTrusted) || kvapi.IsRetryable(err) {
				t.Errorf("err = %v; want a permanent kvapi.ErrCertificateNotTrusted", err)
			}
			if !strings.Contains(err.Error(), "certificate is not trusted") {
				t.Errorf("the error does not say the certificate is not trusted: %v", err)
			}
			var ex *ExhaustedError
			if errors.As(err, &ex) {
				t.Errorf("reported as exhausted retries: %v", err)
			}
			if len(sl.d) != 0 {
				t.Errorf("backed off %v before giving up", sl.d)
			}
			if got := testutil.ToFloat64(m.Retries.WithLabelValues(string(kvapi.OpPut), string(metrics.RetryNetwork))); got != 0 {
				t.Errorf("Retries{put,network} = %v, want 0", got)
			}
		})
	}
}
