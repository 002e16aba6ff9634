package k8s

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tallyid/tally/attest"
)

func staticPod() corev1.Pod {
	p := pod("kube-system", "kube-proxy-node-1", uidStatic, status("kube-proxy", cid("116"), "registry.k8s.io/kube-proxy:v1.34.1"))
	p.Annotations = map[string]string{"kubernetes.io/config.hash": uidStatic, "kubernetes.io/config.source": "file"}
	p.Spec.ServiceAccountName = ""
	return p
}

func nodePods() []corev1.Pod {
	return append(fillerPods(20), webPod(), staticPod())
}

func TestKubeletSelectors(t *testing.T) {
	ca := newTestCA(t, "kubelet-ca")
	k := newFakeKubelet(t, ca, nodePods)
	a, err := New(kubeletConfig(t, k, ca))
	require.NoError(t, err)

	webCommon := []attest.Selector{
		sel("ns:shop"),
		sel("sa:web"),
		sel("pod-name:web-7d9f8b6c5-x2x9q"),
		sel("pod-uid:" + uidBurstable),
		sel("node-name:node-1"),
		sel("pod-label:app:web"),
		sel("pod-label:pod-template-hash:7d9f8b6c5"),
		sel("pod-label:tier:frontend"),
		sel("pod-owner:ReplicaSet:web-7d9f8b6c5"),
	}
	tests := []struct {
		name string
		pid  int32
		want []attest.Selector
	}{
		{
			name: "app container",
			pid:  101,
			want: append(webCommon[:len(webCommon):len(webCommon)],
				sel("container-name:app"),
				sel("container-image:registry.example.com/shop/web:1.4.2"),
				sel("container-image:registry.example.com/shop/web@sha256:"+cid("registry.example.com/shop/web:1.4.2"))),
		},
		{
			name: "init container",
			pid:  140,
			want: append(webCommon[:len(webCommon):len(webCommon)],
				sel("container-name:init-db"),
				sel("container-image:registry.example.com/shop/migrate:1.4.2"),
				sel("container-image:registry.example.com/shop/migrate@sha256:"+cid("registry.example.com/shop/migrate:1.4.2"))),
		},
		{
			name: "ephemeral container",
			pid:  141,
			want: append(webCommon[:len(webCommon):len(webCommon)],
				sel("container-name:debugger"),
				sel("container-image:docker.io/library/busybox:1.36"),
				sel("container-image:docker.io/library/busybox@sha256:"+cid("docker.io/library/busybox:1.36"))),
		},
		{
			name: "static pod, by the kubelet's UID",
			pid:  116,
			want: []attest.Selector{
				sel("ns:kube-system"),
				sel("pod-name:kube-proxy-node-1"),
				sel("pod-uid:" + uidStatic),
				sel("node-name:node-1"),
				sel("container-name:kube-proxy"),
				sel("container-image:registry.k8s.io/kube-proxy:v1.34.1"),
				sel("container-image:registry.k8s.io/kube-proxy@sha256:" + cid("registry.k8s.io/kube-proxy:v1.34.1")),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := a.Attest(t.Context(), attest.Process{PID: tt.pid})
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// TestKubeletTokenAndCache: a burst of attestations makes one request; the
// token file is read for each request, so a rotated token is sent.
func TestKubeletTokenAndCache(t *testing.T) {
	ca := newTestCA(t, "kubelet-ca")
	k := newFakeKubelet(t, ca, nodePods)
	cfg := kubeletConfig(t, k, ca)
	clk := clocktesting.NewFakeClock(time.Now())
	cfg.Clock = clk
	a, err := New(cfg)
	require.NoError(t, err)

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			sels, err := a.Attest(t.Context(), attest.Process{PID: 101})
			assert.NoError(t, err)
			assert.Contains(t, sels, sel("container-name:app"))
		})
	}
	wg.Wait()
	assert.Equal(t, []string{"token-1"}, k.requests(), "one request for the burst")

	require.NoError(t, os.WriteFile(cfg.TokenPath, []byte("token-2"), 0o600))
	_, err = a.Attest(t.Context(), attest.Process{PID: 101})
	require.NoError(t, err)
	assert.Equal(t, []string{"token-1"}, k.requests(), "answered from the cache")

	clk.Step(kubeletCacheTTL)
	_, err = a.Attest(t.Context(), attest.Process{PID: 101})
	require.NoError(t, err)
	assert.Equal(t, []string{"token-1", "token-2"}, k.requests(), "cache expired: a new request with the new token")
}

func TestKubeletUntrusted(t *testing.T) {
	ca := newTestCA(t, "kubelet-ca")
	k := newFakeKubelet(t, ca, nodePods)
	tests := []struct {
		name   string
		config func(*Config)
	}{
		{name: "certificate from another CA", config: func(c *Config) { c.KubeletCAFile = newTestCA(t, "another-ca").file }},
		{name: "certificate for another name", config: func(c *Config) { c.KubeletServerName = "node-2" }},
		{name: "certificate not naming the URL's host", config: func(c *Config) { c.KubeletServerName = "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := kubeletConfig(t, k, ca)
			tt.config(&cfg)
			a, err := New(cfg)
			require.NoError(t, err)
			sels, err := a.Attest(t.Context(), attest.Process{PID: 101})
			require.Error(t, err)
			assert.Nil(t, sels)
			var verr *tls.CertificateVerificationError
			assert.ErrorAs(t, err, &verr)
			assert.Contains(t, err.Error(), "serving certificate not trusted")
			assert.Empty(t, k.requests(), "no token sent to an untrusted server")
		})
	}
}

// TestKubeletContainerAppears: a container the kubelet lists only 300 ms
// after the first look is found by looking again.
func TestKubeletContainerAppears(t *testing.T) {
	ca := newTestCA(t, "kubelet-ca")
	clk := clocktesting.NewFakeClock(time.Now())
	start := clk.Now()
	k := newFakeKubelet(t, ca, func() []corev1.Pod {
		pods := nodePods()
		if clk.Since(start) >= 300*time.Millisecond {
			web := &pods[len(pods)-2]
			web.Status.ContainerStatuses = append(web.Status.ContainerStatuses, status("sidecar", cid("142"), "docker.io/envoyproxy/envoy:v1.31.0"))
		}
		return pods
	})
	cfg := kubeletConfig(t, k, ca)
	cfg.Clock = clk
	a, err := New(cfg)
	require.NoError(t, err)

	done := make(chan struct{})
	var sels []attest.Selector
	go func() {
		defer close(done)
		sels, err = a.Attest(t.Context(), attest.Process{PID: 142})
	}()
	driveClock(t, clk, 10*time.Millisecond, done)
	require.NoError(t, err)
	assert.Contains(t, sels, sel("container-name:sidecar"))
	assert.Contains(t, sels, sel("pod-uid:"+uidBurstable))
	assert.Greater(t, len(k.requests()), 1)
	assert.Less(t, clk.Since(start), DefaultRetryFor)
}

// TestKubeletContainerNeverListed: Attest looks again with fresh pod lists
// for RetryFor, then gives up.
func TestKubeletContainerNeverListed(t *testing.T) {
	ca := newTestCA(t, "kubelet-ca")
	k := newFakeKubelet(t, ca, nodePods)
	cfg := kubeletConfig(t, k, ca)
	clk := clocktesting.NewFakeClock(time.Now())
	cfg.Clock = clk
	a, err := New(cfg)
	require.NoError(t, err)

	start := clk.Now()
	done := make(chan struct{})
	var sels []attest.Selector
	go func() {
		defer close(done)
		sels, err = a.Attest(t.Context(), attest.Process{PID: 142})
	}()
	driveClock(t, clk, 10*time.Millisecond, done)
	require.Error(t, err)
	assert.Nil(t, sels)
	assert.Contains(t, err.Error(), "no pod with container "+cid("142"))
	assert.Contains(t, err.Error(), "pod shop/web-7d9f8b6c5-x2x9q (uid "+uidBurstable+") does not list it")
	assert.GreaterOrEqual(t, clk.Since(start), DefaultRetryFor)
	n := len(k.requests())
	assert.Greater(t, n, 3, "a fresh pod list for each look")
	assert.Less(t, n, 20, "backoff between looks")
}

func TestKubeletAmbiguous(t *testing.T) {
	ca := newTestCA(t, "kubelet-ca")
	k := newFakeKubelet(t, ca, func() []corev1.Pod {
		return append(fillerPods(5),
			// Two pods claim the container of fixture 104.
			pod("a", "one", uidBestEffort, status("c", cid("104"), "img:1")),
			pod("b", "two", uidOther, status("c", cid("104"), "img:1")),
			// The container of fixture 105 (cgroups: pod uidGuaranteed) is
			// listed by another pod.
			pod("c", "three", uidOther, status("c", cid("105"), "img:1")),
		)
	})
	a, err := New(kubeletConfig(t, k, ca))
	require.NoError(t, err)

	tests := []struct {
		name string
		pid  int32
		msg  string
	}{
		{name: "two pods with the container", pid: 104, msg: "container " + cid("104") + " is listed by pods a/one, b/two"},
		{name: "the container in another pod than the cgroups say", pid: 105, msg: "cgroups name pod " + uidGuaranteed + " but container " + cid("105") + " belongs to pod c/three"},
		{name: "cgroups with two pods", pid: 130, msg: "cgroups name pods"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sels, err := a.Attest(t.Context(), attest.Process{PID: tt.pid})
			require.ErrorIs(t, err, ErrAmbiguous)
			assert.NotErrorIs(t, err, attest.ErrDenied)
			assert.Nil(t, sels)
			assert.Contains(t, err.Error(), tt.msg)
		})
	}
}

// TestKubeletNotInPod: a process in no pod gets no selectors and costs no
// request.
func TestKubeletNotInPod(t *testing.T) {
	self, err := os.ReadFile("/proc/self/cgroup")
	require.NoError(t, err)
	require.NotContains(t, string(self), "kubepods", "these tests run on a host (make test), not inside a pod")
	ca := newTestCA(t, "kubelet-ca")
	k := newFakeKubelet(t, ca, nodePods)

	t.Run("this test process", func(t *testing.T) {
		cfg := kubeletConfig(t, k, ca)
		cfg.ProcRoot = "" // the real /proc
		a, err := New(cfg)
		require.NoError(t, err)
		sels, err := a.Attest(t.Context(), attest.Process{PID: int32(os.Getpid())})
		require.NoError(t, err)
		assert.Empty(t, sels)
	})
	for _, pid := range []int32{120, 121, 122, 123, 124, 125} {
		t.Run("fixture "+itoa(int(pid)), func(t *testing.T) {
			a, err := New(kubeletConfig(t, k, ca))
			require.NoError(t, err)
			sels, err := a.Attest(t.Context(), attest.Process{PID: pid})
			require.NoError(t, err)
			assert.Empty(t, sels)
		})
	}
	assert.Empty(t, k.requests())
}

func TestKubeletFailures(t *testing.T) {
	ca := newTestCA(t, "kubelet-ca")
	k := newFakeKubelet(t, ca, nodePods)
	tests := []struct {
		name   string
		config func(t *testing.T, c *Config)
		pid    int32
		msg    string
		denied bool
	}{
		{
			name:   "token file missing",
			config: func(_ *testing.T, c *Config) { c.TokenPath += ".missing" },
			pid:    101, msg: "kubelet token",
		},
		{
			name:   "token file empty",
			config: func(t *testing.T, c *Config) { require.NoError(t, os.WriteFile(c.TokenPath, []byte("\n"), 0o600)) },
			pid:    101, msg: "is empty",
		},
		{
			name:   "kubelet refuses",
			config: func(_ *testing.T, c *Config) { c.KubeletURL += "/nothing-here" },
			pid:    101, msg: "404 Not Found",
		},
		{
			name:   "no such process",
			config: func(*testing.T, *Config) {},
			pid:    999999, msg: "no process 999999", denied: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := kubeletConfig(t, k, ca)
			tt.config(t, &cfg)
			a, err := New(cfg)
			require.NoError(t, err)
			sels, err := a.Attest(t.Context(), attest.Process{PID: tt.pid})
			require.Error(t, err)
			assert.Nil(t, sels)
			assert.Contains(t, err.Error(), tt.msg)
			assert.Equal(t, tt.denied, errors.Is(err, attest.ErrDenied))
		})
	}
}

func TestKubeletCanceled(t *testing.T) {
	ca := newTestCA(t, "kubelet-ca")
	k := newFakeKubelet(t, ca, nodePods)
	cfg := kubeletConfig(t, k, ca)
	clk := clocktesting.NewFakeClock(time.Now())
	cfg.Clock = clk
	a, err := New(cfg)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() {
		_, err := a.Attest(ctx, attest.Process{PID: 142}) // never listed: waits between looks
		done <- err
	}()
	for !clk.HasWaiters() {
		time.Sleep(time.Millisecond)
	}
	cancel()
	assert.ErrorIs(t, <-done, context.Canceled)
}

func TestNewRefusesConfig(t *testing.T) {
	ca := newTestCA(t, "kubelet-ca")
	notPEM := ca.file + ".txt"
	require.NoError(t, os.WriteFile(notPEM, []byte("not a certificate"), 0o644))
	tests := []struct {
		name string
		cfg  Config
		msg  string
	}{
		{name: "unknown source", cfg: Config{PodSource: "etcd"}, msg: `PodSource "etcd"`},
		{name: "plain http", cfg: Config{KubeletURL: "http://127.0.0.1:10255", KubeletCAFile: ca.file}, msg: "want https://"},
		{name: "CA file missing", cfg: Config{KubeletCAFile: ca.file + ".missing"}, msg: "KubeletCAFile"},
		{name: "CA file without PEM", cfg: Config{KubeletCAFile: notPEM}, msg: "no PEM certificate"},
		{name: "apiserver without client", cfg: Config{PodSource: SourceAPIServer, NodeName: "node-1"}, msg: "Pods is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(tt.cfg)
			require.Error(t, err)
			assert.Nil(t, a)
			assert.Contains(t, err.Error(), tt.msg)
		})
	}
}
