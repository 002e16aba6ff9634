package registrar_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/ca/store/badgerstore"
	"github.com/tallyid/tally/registrar"
	"github.com/tallyid/tally/test/internal/k8s"
)

var (
	shared k8s.Shared
	td     = spiffeid.RequireTrustDomainFromString("example.org")

	identities = schema.GroupVersionResource{Group: "tally.dev", Version: "v1alpha1", Resource: "clusteridentities"}
	statics    = schema.GroupVersionResource{Group: "tally.dev", Version: "v1alpha1", Resource: "clusterstaticentries"}
	crds       = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
)

func TestMain(m *testing.M) {
	code := m.Run()
	shared.Stop()
	os.Exit(code)
}

// env is one test's cluster (shared), registry and registrar. The tests
// run one at a time: every registrar sees every resource of the shared
// API server, so two at once would write each other's status.
type env struct {
	t       *testing.T
	c       *k8s.Cluster
	dyn     dynamic.Interface
	reg     *registry.Registry
	entries *countingEntries
	ns      string
	node    *corev1.Node
	label   string // the pods of this test carry test=<label>
}

var crdOnce sync.Once

func newEnv(t *testing.T) *env {
	t.Helper()
	c := shared.Get(t)
	dyn, err := dynamic.NewForConfig(c.Config)
	require.NoError(t, err)
	crdOnce.Do(func() { applyCRDs(t, dyn) })
	st, err := badgerstore.Open(badgerstore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	reg := registry.New(registry.Config{TrustDomain: td, Store: st, Limits: registry.Limits{MaxTTL: 4 * time.Hour}})
	require.NoError(t, reg.Load(t.Context()))
	ns := c.Namespace(t)
	label := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(label) > 50 {
		label = label[:50]
	}
	return &env{t: t, c: c, dyn: dyn, reg: reg, entries: &countingEntries{Registry: reg}, ns: ns,
		node: c.Node(t, "node-"+ns, nil), label: label}
}

// applyCRDs creates the CRDs of deploy/crds and waits until they serve.
func applyCRDs(t *testing.T, dyn dynamic.Interface) {
	files, err := filepath.Glob("../../deploy/crds/tally.dev_*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		raw, err := os.ReadFile(f)
		require.NoError(t, err)
		var obj map[string]any
		require.NoError(t, yaml.Unmarshal(raw, &obj))
		_, err = dyn.Resource(crds).Create(t.Context(), &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
		if !apierrors.IsAlreadyExists(err) {
			require.NoError(t, err, f)
		}
	}
	for _, gvr := range []schema.GroupVersionResource{identities, statics, policies} {
		require.NoError(t, wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			_, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1})
			return err == nil, nil
		}), gvr.Resource)
	}
}

// countingEntries counts the registrar's writes.
type countingEntries struct {
	*registry.Registry
	writes atomic.Int64
}

func (c *countingEntries) WriteEntries(ctx context.Context, w store.EntryWrites) (store.EntryWrites, error) {
	c.writes.Add(1)
	return c.Registry.WriteEntries(ctx, w)
}

// start runs a registrar for cluster until the test ends.
func (e *env) start(cluster string, le *registrar.LeaderElection) *prometheus.Registry {
	e.t.Helper()
	metrics, _ := e.stoppable(cluster, le)
	return metrics
}

// stoppable is start with a function that stops the registrar earlier.
func (e *env) stoppable(cluster string, le *registrar.LeaderElection) (*prometheus.Registry, func()) {
	e.t.Helper()
	metrics := prometheus.NewRegistry()
	r, err := registrar.New(registrar.Config{TrustDomain: td, Cluster: cluster, Kube: e.c.Client, Dynamic: e.dyn,
		Entries: e.entries, LeaderElection: le, StatusInterval: 100 * time.Millisecond, Metrics: metrics})
	require.NoError(e.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			require.NoError(e.t, <-done)
		})
	}
	e.t.Cleanup(stop)
	return metrics, stop
}

// identity creates (or replaces) ClusterIdentity name selecting this
// test's pods, with spec merged over that selector; deleted at the end.
func (e *env) identity(name string, spec map[string]any) {
	e.t.Helper()
	if _, ok := spec["podSelector"]; !ok {
		spec["podSelector"] = map[string]any{"matchLabels": map[string]any{"test": e.label}}
	}
	e.apply(identities, name, spec)
}

func (e *env) apply(gvr schema.GroupVersionResource, name string, spec map[string]any) {
	e.t.Helper()
	kind := map[string]string{"clusteridentities": "ClusterIdentity", "clusterstaticentries": "ClusterStaticEntry", "delegationpolicies": "DelegationPolicy"}[gvr.Resource]
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "tally.dev/v1alpha1", "kind": kind,
		"metadata": map[string]any{"name": name}, "spec": spec,
	}}
	_, err := e.dyn.Resource(gvr).Apply(e.t.Context(), name, u, metav1.ApplyOptions{FieldManager: "test", Force: true})
	require.NoError(e.t, err)
	e.t.Cleanup(func() { _ = e.dyn.Resource(gvr).Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

func (e *env) delete(gvr schema.GroupVersionResource, name string) {
	e.t.Helper()
	require.NoError(e.t, e.dyn.Resource(gvr).Delete(e.t.Context(), name, metav1.DeleteOptions{}))
}

func (e *env) pod(name string, labels map[string]string) *corev1.Pod {
	e.t.Helper()
	l := map[string]string{"test": e.label}
	for k, v := range labels {
		l[k] = v
	}
	return e.c.Pod(e.t, e.ns, name, "web", e.node.Name, l)
}

// owned returns cluster's entries by "<identity> <pod>" or "<static>".
func (e *env) owned(cluster string) map[string]store.Entry {
	out := map[string]store.Entry{}
	e.reg.Owned(cluster, func(en *store.Entry) {
		key := en.Owner.Name
		if en.Owner.Pod != "" {
			key += " " + en.Owner.Pod
		}
		out[key] = *en
	})
	return out
}

// eventually waits until f holds of cluster's entries.
func (e *env) eventually(cluster string, what string, f func(map[string]store.Entry) bool) map[string]store.Entry {
	e.t.Helper()
	var got map[string]store.Entry
	err := wait.PollUntilContextTimeout(e.t.Context(), 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		got = e.owned(cluster)
		return f(got), nil
	})
	require.NoError(e.t, err, "%s; entries now: %v", what, keys(got))
	return got
}

func keys(m map[string]store.Entry) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+" → "+v.SPIFFEID)
	}
	return out
}

// status waits until ClusterIdentity or ClusterStaticEntry name's status satisfies f.
func (e *env) status(gvr schema.GroupVersionResource, name string, f func(status map[string]any) bool) map[string]any {
	e.t.Helper()
	var status map[string]any
	err := wait.PollUntilContextTimeout(e.t.Context(), 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		u, err := e.dyn.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		status, _, _ = unstructured.NestedMap(u.Object, "status")
		return status != nil && f(status), nil
	})
	require.NoError(e.t, err, "status of %s now: %v", name, status)
	return status
}

func condition(status map[string]any, typ string) (string, string, string) {
	conds, _, _ := unstructured.NestedSlice(status, "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == typ {
			return fmt.Sprint(m["status"]), fmt.Sprint(m["reason"]), fmt.Sprint(m["message"])
		}
	}
	return "", "", ""
}

func count(status map[string]any, field string) int64 {
	v, _, _ := unstructured.NestedInt64(status, field)
	return v
}

// events returns the messages of the Events about ClusterIdentity name with reason.
func (e *env) events(name, reason string) []string {
	e.t.Helper()
	list, err := e.c.Client.CoreV1().Events("").List(e.t.Context(), metav1.ListOptions{
		FieldSelector: "involvedObject.name=" + name + ",reason=" + reason})
	require.NoError(e.t, err)
	var out []string
	for _, ev := range list.Items {
		out = append(out, ev.Message)
	}
	return out
}

var errNotYet = errors.New("not yet")
