package nodesim

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// kubeletServer is the simulated kubelet's HTTPS API.
type kubeletServer struct {
	n      *Node
	srv    *http.Server
	url    string
	caFile string
	caPEM  []byte
	served sync.WaitGroup

	mu    sync.Mutex
	cache map[[32]byte]time.Time // sha256(token) -> end of its cached success

	podsRequests atomic.Int64
}

func startKubeletServer(t testing.TB, n *Node) (*kubeletServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("nodesim: listen: %w", err)
	}
	cert, caPEM, err := servingCert(n.Name)
	if err != nil {
		ln.Close()
		return nil, err
	}
	s := &kubeletServer{
		n:      n,
		url:    "https://" + ln.Addr().String(),
		caFile: filepath.Join(t.TempDir(), "kubelet-ca.crt"),
		caPEM:  caPEM,
		cache:  map[[32]byte]time.Time{},
	}
	if err := os.WriteFile(s.caFile, caPEM, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("nodesim: write ca: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /pods", s.pods)
	mux.HandleFunc("GET /pods/", s.pods)
	s.srv = &http.Server{
		Handler:           mux,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // TLS handshake noise; clients see their errors
	}
	s.served.Go(func() { _ = s.srv.ServeTLS(ln, "", "") })
	return s, nil
}

func (s *kubeletServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		_ = s.srv.Close()
	}
	s.served.Wait()
}

// pods serves GET /pods: the kubelet's v1.PodList of the pods bound to this node, each with the
// status the kubelet would report (see Node.podStatus), sorted by namespace/name.
func (s *kubeletServer) pods(w http.ResponseWriter, r *http.Request) {
	if code := s.authorize(r); code != http.StatusOK {
		http.Error(w, http.StatusText(code), code)
		return
	}
	s.podsRequests.Add(1)
	list := corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}, Items: []corev1.Pod{}}
	now := time.Now()
	for _, obj := range s.n.informer.GetStore().List() {
		pod := obj.(*corev1.Pod).DeepCopy()
		pod.Status = s.n.podStatus(pod, s.n.state(pod), now)
		list.Items = append(list.Items, *pod)
	}
	sort.Slice(list.Items, func(i, j int) bool {
		a, b := list.Items[i], list.Items[j]
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&list)
}

// authorize authenticates the bearer token with a TokenReview against the cluster (the
// apiserver's default audiences, as a kubelet's webhook authenticator does) and, with
// Options.Authorize, checks `get nodes/proxy` with a SubjectAccessReview. It returns 200, 401
// or 403. Successes are cached for Options.AuthCacheTTL.
func (s *kubeletServer) authorize(r *http.Request) int {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	token = strings.TrimSpace(token)
	if !ok || token == "" {
		return http.StatusUnauthorized
	}
	key := sha256.Sum256([]byte(token))
	s.mu.Lock()
	until, hit := s.cache[key]
	s.mu.Unlock()
	if hit && time.Now().Before(until) {
		return http.StatusOK
	}

	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	client := s.n.cluster.Client
	tr, err := client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token},
	}, metav1.CreateOptions{})
	if err != nil || !tr.Status.Authenticated {
		return http.StatusUnauthorized
	}
	if s.n.opts.Authorize {
		u := tr.Status.User
		extra := map[string]authorizationv1.ExtraValue{}
		for k, v := range u.Extra {
			extra[k] = authorizationv1.ExtraValue(v)
		}
		sar, err := client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra,
				ResourceAttributes: &authorizationv1.ResourceAttributes{
					Verb: "get", Resource: "nodes", Subresource: "proxy", Name: s.n.Name,
				},
			},
		}, metav1.CreateOptions{})
		if err != nil || !sar.Status.Allowed {
			return http.StatusForbidden
		}
	}
	if ttl := s.n.opts.AuthCacheTTL; ttl > 0 {
		s.mu.Lock()
		s.cache[key] = time.Now().Add(ttl)
		s.mu.Unlock()
	}
	return http.StatusOK
}

// PodsRequests returns how many authorized GET /pods requests the node has served, for tests
// of an attestor's retries.
func (n *Node) PodsRequests() int { return int(n.srv.podsRequests.Load()) }

// servingCert makes a fresh EC P-256 CA and a serving certificate it signs for 127.0.0.1,
// localhost and nodeName, as a kubelet's self-signed or CSR-issued certificate would be.
func servingCert(nodeName string) (tls.Certificate, []byte, error) {
	fail := func(err error) (tls.Certificate, []byte, error) {
		return tls.Certificate{}, nil, fmt.Errorf("nodesim: serving certificate: %w", err)
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fail(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nodesim-ca-" + nodeName},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return fail(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fail(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fail(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: nodeName},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost", nodeName},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return fail(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), nil
}
