package k8s

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/attest"
)

// The pod UIDs the fixtures under testdata/proc carry.
const (
	uidBurstable  = "6a1f0c2e-3b7d-4e59-9c1a-2f8e7d6b5a41"
	uidBestEffort = "0f3e9d2c-1a4b-4c5d-8e6f-7a8b9c0d1e2f"
	uidGuaranteed = "c7d8e9f0-a1b2-4c3d-9e4f-5a6b7c8d9e0f"
	uidStatic     = "3c7b9e1f5a2d4c6e8b0a1d3f5e7c9b2a"
	uidOther      = "51c2d3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e"
)

const fixtureRoot = "testdata/proc"

// cid is the container ID the fixtures use for name (the pid of the
// fixture, mostly): sha256(name) in hex.
func cid(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:])
}

func sel(v string) attest.Selector { return attest.Selector{Type: Type, Value: v} }

// status is a running container's status as a containerd node reports it.
func status(name, id, image string) corev1.ContainerStatus {
	return corev1.ContainerStatus{
		Name:        name,
		ContainerID: "containerd://" + id,
		Image:       image,
		ImageID:     strings.SplitN(image, ":", 2)[0] + "@sha256:" + cid(image),
		Ready:       true,
		State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}},
	}
}

// webPod is a Deployment's pod on node-1 (uid uidBurstable) with its app
// container (fixture 101), a finished init container (140) and an
// ephemeral debug container (141), as the kubelet and API server show it.
func webPod() corev1.Pod {
	p := pod("shop", "web-7d9f8b6c5-x2x9q", uidBurstable, status("app", cid("101"), "registry.example.com/shop/web:1.4.2"))
	p.Labels = map[string]string{"app": "web", "pod-template-hash": "7d9f8b6c5", "tier": "frontend"}
	p.Spec.ServiceAccountName = "web"
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-7d9f8b6c5", UID: "0d1c2b3a-4958-4677-8695-a4b3c2d1e0f9", Controller: ptr(true)}}
	p.Spec.InitContainers = []corev1.Container{{Name: "init-db", Image: "registry.example.com/shop/migrate:1.4.2"}}
	init := status("init-db", cid("140"), "registry.example.com/shop/migrate:1.4.2")
	init.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", ContainerID: init.ContainerID}}
	p.Status.InitContainerStatuses = []corev1.ContainerStatus{init}
	p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger", Image: "busybox:1.36"}}}
	dbg := status("debugger", cid("141"), "docker.io/library/busybox:1.36")
	p.Status.EphemeralContainerStatuses = []corev1.ContainerStatus{dbg}
	return p
}

// pod is a running pod on node-1 with containers cs.
func pod(ns, name, uid string, cs ...corev1.ContainerStatus) corev1.Pod {
	p := corev1.Pod{
		TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{
			Namespace:         ns,
			Name:              name,
			UID:               types.UID(uid),
			ResourceVersion:   "48213",
			CreationTimestamp: metav1.Now(),
			Annotations:       map[string]string{"kubernetes.io/config.seen": "2026-11-29T10:00:00Z", "kubernetes.io/config.source": "api"},
		},
		Spec: corev1.PodSpec{
			NodeName:           "node-1",
			ServiceAccountName: "default",
			RestartPolicy:      corev1.RestartPolicyAlways,
		},
		Status: corev1.PodStatus{
			Phase:             corev1.PodRunning,
			HostIP:            "10.0.0.11",
			PodIP:             "10.244.1.17",
			QOSClass:          corev1.PodQOSBurstable,
			ContainerStatuses: cs,
		},
	}
	for _, c := range cs {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c.Name, Image: c.Image})
	}
	return p
}

// fillerPods are n other pods of the node, each with two containers.
func fillerPods(n int) []corev1.Pod {
	out := make([]corev1.Pod, n)
	for i := range out {
		uid := cid("filler-uid-" + itoa(i))
		uid = uid[:8] + "-" + uid[8:12] + "-" + uid[12:16] + "-" + uid[16:20] + "-" + uid[20:32]
		out[i] = pod("team-"+itoa(i%7), "svc-"+itoa(i), uid,
			status("main", cid("filler-main-"+itoa(i)), "registry.example.com/team/svc:"+itoa(i)),
			status("envoy", cid("filler-envoy-"+itoa(i)), "docker.io/envoyproxy/envoy:v1.31.0"))
		out[i].Labels = map[string]string{"app": "svc-" + itoa(i)}
	}
	return out
}

func itoa(i int) string { return strconv.Itoa(i) }

func ptr[T any](v T) *T { return &v }

// testCA is a CA made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // PEM of cert
}

func newTestCA(t testing.TB, cn string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "ca.crt")
	require.NoError(t, os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	return &testCA{cert: cert, key: key, file: file}
}

// serving issues a kubelet serving certificate naming dns and ips.
func (ca *testCA) serving(t testing.TB, dns []string, ips []net.IP) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "system:node:node-1", Organization: []string{"system:nodes"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// fakeKubelet serves GET /pods over HTTPS like a kubelet: the node's pods
// as a v1 PodList, to a bearer token only.
type fakeKubelet struct {
	srv *httptest.Server

	mu     sync.Mutex
	pods   func() []corev1.Pod
	tokens []string // the token of each request that reached /pods
}

// newFakeKubelet starts a kubelet whose serving certificate, from ca, names
// node-1 only (as a TLS-bootstrapped kubelet's does; not 127.0.0.1).
func newFakeKubelet(t testing.TB, ca *testCA, pods func() []corev1.Pod) *fakeKubelet {
	t.Helper()
	k := &fakeKubelet{pods: pods}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /pods", func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		k.mu.Lock()
		k.tokens = append(k.tokens, token)
		items := k.pods()
		k.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(corev1.PodList{
			TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
			Items:    items,
		}); err != nil {
			t.Errorf("fake kubelet: %v", err)
		}
	})
	k.srv = httptest.NewUnstartedServer(mux)
	k.srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.serving(t, []string{"node-1"}, nil)}}
	k.srv.StartTLS()
	t.Cleanup(k.srv.Close)
	return k
}

func (k *fakeKubelet) requests() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.tokens...)
}

// kubeletConfig is a Config for k's node, trusting ca, with token file
// holding "token-1" and the fixtures as procfs.
func kubeletConfig(t testing.TB, k *fakeKubelet, ca *testCA) Config {
	t.Helper()
	token := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(token, []byte("token-1\n"), 0o600))
	return Config{
		NodeName:          "node-1",
		PodSource:         SourceKubelet,
		KubeletURL:        k.srv.URL,
		KubeletCAFile:     ca.file,
		KubeletServerName: "node-1",
		TokenPath:         token,
		ProcRoot:          fixtureRoot,
	}
}

// driveClock steps clk by step whenever something waits on it, until done
// is closed; it fails t if that takes more than 30 s of real time.
func driveClock(t *testing.T, clk *clocktesting.FakeClock, step time.Duration, done <-chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-done:
			return
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("attestation did not finish")
		}
		if clk.HasWaiters() {
			clk.Step(step)
		} else {
			time.Sleep(time.Millisecond)
		}
	}
}
