package registrar

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/tallyid/tally/internal/logkey"
)

// fieldManager owns the status the registrar writes (server-side apply).
const fieldManager = "tally-registrar"

// Condition types and reasons of the resources' status.
const (
	condReady  = "Ready"
	condMasked = "Masked"

	reasonReconciled   = "Reconciled"
	reasonInvalidSpec  = "InvalidSpec"
	reasonRenderFailed = "RenderFailed"
	reasonWriteFailed  = "WriteFailed"
	reasonMasked       = "EntriesMasked"
	reasonNotMasked    = "NoneMasked"
)

// statusBook keeps what each resource did for the pods, sends an Event
// when that changes for a pod, and writes the status of changed resources
// every interval (a burst of pod changes is one status write).
type statusBook struct {
	t      *term
	events *eventRecorder

	mu       sync.Mutex
	idents   map[string]*identityState
	statics  map[string]staticState
	dirty    map[string]bool // "ClusterIdentity/<name>" or "ClusterStaticEntry/<name>"
	lastSpec map[string]string
}

type identityState struct {
	id   *identity
	pods map[types.UID]podOutcome
}

type staticState struct {
	obj *unstructured.Unstructured
	err error
}

func newStatusBook(t *term, events *eventRecorder) *statusBook {
	return &statusBook{t: t, events: events, idents: map[string]*identityState{}, statics: map[string]staticState{},
		dirty: map[string]bool{}, lastSpec: map[string]string{}}
}

// identities takes the compiled identities; one whose spec does not
// compile gets an Event once per distinct error.
func (b *statusBook) identities(ids []*identity) {
	b.mu.Lock()
	defer b.mu.Unlock()
	seen := map[string]bool{}
	for _, id := range ids {
		seen[id.name] = true
		st := b.idents[id.name]
		if st == nil {
			st = &identityState{pods: map[types.UID]podOutcome{}}
			b.idents[id.name] = st
		}
		// A new identity, a new generation or a new compile error needs a
		// status; the registrar's own status write (which comes back as
		// an update) does not.
		changed := st.id == nil || st.id.obj.GetGeneration() != id.obj.GetGeneration()
		st.id = id
		msg := errText(id.err)
		if msg != b.lastSpec[id.name] {
			changed = true
			if msg != "" {
				b.events.warn(id.obj, reasonInvalidSpec, "spec: %s", msg)
			}
		}
		b.lastSpec[id.name] = msg
		if changed {
			b.dirty["ClusterIdentity/"+id.name] = true
		}
	}
	for name := range b.idents {
		if !seen[name] {
			delete(b.idents, name)
			delete(b.lastSpec, name)
			delete(b.dirty, "ClusterIdentity/"+name)
		}
	}
}

// pod records what each identity did for pod uid (outcomes lists only the
// identities that apply to it now).
func (b *statusBook) pod(uid types.UID, outcomes []podOutcome) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := make(map[string]podOutcome, len(outcomes))
	for _, o := range outcomes {
		now[o.identity] = o
	}
	for name, st := range b.idents {
		o, applies := now[name]
		old, had := st.pods[uid]
		switch {
		case !applies && had:
			delete(st.pods, uid)
		case applies && (!had || old.result != o.result || errText(old.err) != errText(o.err)):
			st.pods[uid] = o
			if o.result != outcomeWritten {
				b.events.warn(st.id.obj, outcomeReason(o.result), "pod %s: %s", b.podName(uid), errText(o.err))
			}
		default:
			continue
		}
		b.dirty["ClusterIdentity/"+name] = true
	}
}

func (b *statusBook) podName(uid types.UID) string {
	if pod := b.t.pod(uid); pod != nil {
		return pod.Namespace + "/" + pod.Name
	}
	return string(uid)
}

// static records the outcome of a ClusterStaticEntry.
func (b *statusBook) static(u *unstructured.Unstructured, err error) {
	if u == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old, had := b.statics[u.GetName()]
	if had && errText(old.err) == errText(err) && old.obj.GetGeneration() == u.GetGeneration() {
		return
	}
	if err != nil && (!had || errText(old.err) != errText(err)) {
		b.events.warn(u, reasonInvalidSpec, "%s", err)
	}
	b.statics[u.GetName()] = staticState{obj: u, err: err}
	b.dirty["ClusterStaticEntry/"+u.GetName()] = true
}

// run writes the status of changed resources every interval until ctx ends.
func (b *statusBook) run(ctx context.Context, interval time.Duration) {
	tick := b.t.cfg.Clock.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C():
			b.flush(ctx)
		}
	}
}

func (b *statusBook) flush(ctx context.Context) {
	b.mu.Lock()
	keys := slices.Sorted(maps.Keys(b.dirty))
	clear(b.dirty)
	var writes []*unstructured.Unstructured
	for _, k := range keys {
		kind, name, _ := strings.Cut(k, "/")
		switch kind {
		case "ClusterIdentity":
			if st := b.idents[name]; st != nil {
				writes = append(writes, b.identityStatus(st))
			}
		case "ClusterStaticEntry":
			if st, ok := b.statics[name]; ok {
				writes = append(writes, staticStatus(st))
			}
		}
	}
	b.mu.Unlock()
	for _, u := range writes {
		gvr := clusterIdentities
		if u.GetKind() == "ClusterStaticEntry" {
			gvr = clusterStaticEntries
		}
		_, err := b.t.cfg.Dynamic.Resource(gvr).ApplyStatus(ctx, u.GetName(), u, metav1.ApplyOptions{FieldManager: fieldManager, Force: true})
		if err != nil && ctx.Err() == nil {
			b.t.log.Warn("status not written; retrying", logkey.Kind, u.GetKind(), logkey.ID, u.GetName(), logkey.Error, err)
			b.mu.Lock()
			b.dirty[u.GetKind()+"/"+u.GetName()] = true
			b.mu.Unlock()
		}
	}
}

// identityStatus is the status of a ClusterIdentity (b.mu held).
func (b *statusBook) identityStatus(st *identityState) *unstructured.Unstructured {
	var failed, masked, failing int
	var firstErr string
	for _, o := range st.pods {
		switch o.result {
		case outcomeRenderFailed:
			failed++
		case outcomeMasked:
			masked++
		case outcomeFailing:
			failing++
		}
		if o.result != outcomeWritten && firstErr == "" {
			firstErr = errText(o.err)
		}
	}
	namespaces := 0
	if st.id.err == nil {
		for _, obj := range b.t.namespaces.GetStore().List() {
			if ns, ok := obj.(*corev1.Namespace); ok && st.id.namespaces.Matches(labelsOf(ns)) {
				namespaces++
			}
		}
	}
	gen := st.id.obj.GetGeneration()
	conds := conditionsOf(st.id.obj)
	ready := metav1.Condition{Type: condReady, Status: metav1.ConditionTrue, Reason: reasonReconciled, ObservedGeneration: gen,
		Message: fmt.Sprintf("%d pods selected, %d with entries", len(st.pods), len(st.pods)-failed-masked-failing)}
	switch {
	case st.id.err != nil:
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, reasonInvalidSpec, st.id.err.Error()
	case failed > 0:
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, reasonRenderFailed, fmt.Sprintf("%d pods did not render, e.g. %s", failed, firstErr)
	case failing > 0:
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, reasonWriteFailed, fmt.Sprintf("%d entries not written, e.g. %s", failing, firstErr)
	}
	meta.SetStatusCondition(&conds, ready)
	m := metav1.Condition{Type: condMasked, Status: metav1.ConditionFalse, Reason: reasonNotMasked, ObservedGeneration: gen, Message: "no entry masked"}
	if masked > 0 {
		m.Status, m.Reason, m.Message = metav1.ConditionTrue, reasonMasked, fmt.Sprintf("%d pods' entries are kept by another identity or entry", masked)
	}
	meta.SetStatusCondition(&conds, m)
	return statusObject("ClusterIdentity", st.id.name, map[string]any{
		"conditions":         conditionsJSON(conds),
		"namespacesSelected": int64(namespaces),
		"podsSelected":       int64(len(st.pods)),
		"renderFailures":     int64(failed),
		"entriesMasked":      int64(masked),
		"entriesFailing":     int64(failing),
		"observedGeneration": gen,
	})
}

func staticStatus(st staticState) *unstructured.Unstructured {
	gen := st.obj.GetGeneration()
	conds := conditionsOf(st.obj)
	ready := metav1.Condition{Type: condReady, Status: metav1.ConditionTrue, Reason: reasonReconciled, ObservedGeneration: gen, Message: "entry written"}
	if st.err != nil {
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, reasonInvalidSpec, st.err.Error()
	}
	meta.SetStatusCondition(&conds, ready)
	return statusObject("ClusterStaticEntry", st.obj.GetName(), map[string]any{
		"conditions":         conditionsJSON(conds),
		"observedGeneration": gen,
	})
}

func statusObject(kind, name string, status map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "tally.dev/v1alpha1",
		"kind":       kind,
		"metadata":   map[string]any{"name": name},
		"status":     status,
	}}
}

// conditionsOf decodes the conditions u's status has now, so that a
// condition whose status stays keeps its lastTransitionTime.
func conditionsOf(u *unstructured.Unstructured) []metav1.Condition {
	raw, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	var out []metav1.Condition
	for _, c := range raw {
		m, ok := c.(map[string]any)
		if !ok {
			continue
		}
		var cond metav1.Condition
		if runtime.DefaultUnstructuredConverter.FromUnstructured(m, &cond) == nil {
			out = append(out, cond)
		}
	}
	return out
}

func conditionsJSON(conds []metav1.Condition) []any {
	out := make([]any, 0, len(conds))
	for i := range conds {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&conds[i])
		if err == nil {
			out = append(out, m)
		}
	}
	return out
}

func outcomeReason(o outcome) string {
	switch o {
	case outcomeRenderFailed:
		return reasonRenderFailed
	case outcomeMasked:
		return reasonMasked
	}
	return reasonWriteFailed
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// eventRecorder sends Kubernetes Events about the resources.
type eventRecorder struct {
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
}

func newEventRecorder(kube kubernetes.Interface) *eventRecorder {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	// The resources are unstructured and carry their kind: no scheme needed.
	scheme := runtime.NewScheme()
	return &eventRecorder{broadcaster: b, recorder: b.NewRecorder(scheme, corev1.EventSource{Component: fieldManager})}
}

func (e *eventRecorder) warn(obj *unstructured.Unstructured, reason, format string, args ...any) {
	if obj == nil {
		return
	}
	e.recorder.Eventf(obj, corev1.EventTypeWarning, reason, format, args...)
}

func (e *eventRecorder) shutdown() { e.broadcaster.Shutdown() }
