package registrar

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tallyid/tally/attest/k8spsat"
	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/internal/reserved"
)

// reconcile makes the entries of key what its object renders, with at most
// one write; wrote says whether it wrote.
func (t *term) reconcile(ctx context.Context, key string) (wrote bool, err error) {
	switch {
	case strings.HasPrefix(key, podKey):
		return t.reconcilePod(ctx, types.UID(strings.TrimPrefix(key, podKey)))
	case strings.HasPrefix(key, staticKey):
		return t.reconcileStatic(ctx, strings.TrimPrefix(key, staticKey))
	}
	return false, fmt.Errorf("unknown key %q", key)
}

// podOutcome is what one identity did for one pod, for its status.
type podOutcome struct {
	identity string
	result   outcome
	err      error // render or write error, for the Event
}

type outcome int

const (
	outcomeWritten outcome = iota // selected, rendered, its entry exists
	outcomeRenderFailed
	outcomeMasked  // its entry equals one that another identity or a hand-made entry already has
	outcomeFailing // the write failed
)

func (t *term) reconcilePod(ctx context.Context, uid types.UID) (bool, error) {
	pod := t.pod(uid)
	t.mu.Lock()
	have := t.owned[uid]
	t.mu.Unlock()
	start := t.cfg.Clock.Now()
	want, outcomes := t.desired(pod, have)
	t.metrics.render.Observe(t.cfg.Clock.Since(start).Seconds())
	w := diff(have, want)
	if empty(w) {
		t.status.pod(uid, outcomes)
		return false, nil
	}
	start = t.cfg.Clock.Now()
	out, err := t.batch.write(ctx, w)
	t.metrics.write.Observe(t.cfg.Clock.Since(start).Seconds())
	if err != nil {
		for i := range outcomes {
			if outcomes[i].result == outcomeWritten {
				outcomes[i].result, outcomes[i].err = outcomeFailing, err
			}
		}
		t.status.pod(uid, outcomes)
		return false, fmt.Errorf("pod %s: %w", podName(pod, have), err)
	}
	now := applied(have, w, out)
	t.mu.Lock()
	if len(now) == 0 {
		delete(t.owned, uid)
	} else {
		t.owned[uid] = now
	}
	t.written += len(now) - len(have)
	t.metrics.entries.Set(float64(t.written))
	t.mu.Unlock()
	t.status.pod(uid, outcomes)
	return true, nil
}

// pod returns the cached pod with uid, or nil if there is none.
func (t *term) pod(uid types.UID) *corev1.Pod {
	objs, err := t.pods.GetIndexer().ByIndex(byUID, string(uid))
	if err != nil || len(objs) == 0 {
		return nil
	}
	pod, _ := objs[0].(*corev1.Pod)
	return pod
}

// desired renders the entries pod should have, one per identity that
// applies to it: the identities that select it, or if none does, the
// fallback identities that do. A pod that does not exist, has finished or
// is not scheduled yet has none (a pending pod is no error). have are the
// entries the pod has now.
func (t *term) desired(pod *corev1.Pod, have []store.Entry) ([]store.Entry, []podOutcome) {
	if pod == nil || pod.Spec.NodeName == "" || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil, nil
	}
	node := t.node(pod.Spec.NodeName)
	if node == nil {
		return nil, nil // queued again when the node appears (enqueueIndexed)
	}
	parent, err := reserved.AgentID(t.cfg.TrustDomain, k8spsat.Type, t.cfg.Cluster, string(node.UID))
	if err != nil {
		return nil, nil // a node UID that is no path segment: no agent can attest it either
	}
	ns := t.namespace(pod.Namespace)

	t.idMu.RLock()
	ids := t.identities
	t.idMu.RUnlock()
	var applies []*identity
	for _, fallback := range []bool{false, true} {
		for _, id := range ids {
			if id.spec.Fallback == fallback && id.selects(pod, ns) {
				applies = append(applies, id)
			}
		}
		if len(applies) > 0 {
			break
		}
	}
	if len(applies) == 0 {
		return nil, nil
	}

	data := &templateData{
		TrustDomain: t.cfg.TrustDomain.Name(), ClusterName: t.cfg.Cluster,
		PodMeta: &pod.ObjectMeta, PodSpec: &pod.Spec, NodeMeta: &node.ObjectMeta, NodeSpec: &node.Spec,
	}
	mine := make(map[string]bool, len(have))
	for _, e := range have {
		mine[e.ID] = true
	}

	var want []store.Entry
	outcomes := make([]podOutcome, 0, len(applies))
	for _, id := range applies {
		e, err := id.render(t.cfg.TrustDomain, data, pod, parent.String(), t.cfg.Cluster)
		if err == nil {
			err = t.cfg.Entries.Validate(&e)
		}
		if err != nil {
			outcomes = append(outcomes, podOutcome{identity: id.name, result: outcomeRenderFailed, err: err})
			continue
		}
		// Two identities rendering the same entry for this pod: the first
		// by name keeps it. An equal entry that is not this pod's (made by
		// hand, or by another cluster's registrar) masks it too.
		if slices.ContainsFunc(want, func(w store.Entry) bool { return registry.Equal(&w, &e) }) {
			outcomes = append(outcomes, podOutcome{identity: id.name, result: outcomeMasked, err: errors.New("another ClusterIdentity renders the same entry")})
			continue
		}
		if other := t.cfg.Entries.FindEqual(&e); other != "" && !mine[other] {
			outcomes = append(outcomes, podOutcome{identity: id.name, result: outcomeMasked, err: fmt.Errorf("entry %s, not kept by this identity, is equal", other)})
			continue
		}
		want = append(want, e)
		outcomes = append(outcomes, podOutcome{identity: id.name, result: outcomeWritten})
	}
	return want, outcomes
}

func (t *term) node(name string) *corev1.Node {
	obj, ok, err := t.nodes.GetStore().GetByKey(name)
	if err != nil || !ok {
		return nil
	}
	node, _ := obj.(*corev1.Node)
	return node
}

func (t *term) namespace(name string) *corev1.Namespace {
	obj, ok, err := t.namespaces.GetStore().GetByKey(name)
	if err != nil || !ok {
		return nil
	}
	ns, _ := obj.(*corev1.Namespace)
	return ns
}

func (t *term) reconcileStatic(ctx context.Context, name string) (bool, error) {
	t.mu.Lock()
	cur, have := t.static[name]
	t.mu.Unlock()
	obj, exists, err := t.statics.GetStore().GetByKey(name)
	if err != nil {
		return false, err
	}
	var want []store.Entry
	var u *unstructured.Unstructured
	var renderErr error
	if exists {
		u, _ = obj.(*unstructured.Unstructured)
		e, err := staticEntry(u, t.cfg.Cluster)
		if err == nil {
			err = t.cfg.Entries.Validate(&e)
		}
		if err == nil {
			if other := t.cfg.Entries.FindEqual(&e); other != "" && (!have || other != cur.ID) {
				err = fmt.Errorf("entry %s, not kept by this resource, is equal", other)
			}
		}
		if err != nil {
			renderErr = err
		} else {
			want = []store.Entry{e}
		}
	}
	var haveList []store.Entry
	if have {
		haveList = []store.Entry{cur}
	}
	// An invalid resource keeps the entry it had: the last good spec stays
	// in force until it is fixed or deleted.
	if renderErr != nil {
		t.status.static(u, renderErr)
		return false, nil
	}
	w := diff(haveList, want)
	if empty(w) {
		if u != nil {
			t.status.static(u, nil)
		}
		return false, nil
	}
	out, err := t.batch.write(ctx, w)
	if err != nil {
		if u != nil {
			t.status.static(u, err)
		}
		return false, fmt.Errorf("ClusterStaticEntry %s: %w", name, err)
	}
	now := applied(haveList, w, out)
	t.mu.Lock()
	if len(now) == 0 {
		delete(t.static, name)
	} else {
		t.static[name] = now[0]
	}
	t.written += len(now) - len(haveList)
	t.metrics.entries.Set(float64(t.written))
	t.mu.Unlock()
	if u != nil {
		t.status.static(u, nil)
	}
	return true, nil
}

// diff is the one write that turns have into want: entries are matched by
// the resource that renders them (Owner.Name); a changed one is updated in
// place (keeping its ID), a new one created, a gone one deleted.
func diff(have, want []store.Entry) store.EntryWrites {
	var w store.EntryWrites
	byName := make(map[string]store.Entry, len(have))
	for _, e := range have {
		byName[e.Owner.Name] = e
	}
	for _, e := range want {
		old, ok := byName[e.Owner.Name]
		delete(byName, e.Owner.Name)
		switch {
		case !ok:
			w.Create = append(w.Create, e)
		case !sameContent(&old, &e):
			e.ID = old.ID
			w.Update = append(w.Update, e)
		}
	}
	for _, e := range have {
		if _, gone := byName[e.Owner.Name]; gone {
			w.Delete = append(w.Delete, e.ID)
		}
	}
	return w
}

func empty(w store.EntryWrites) bool { return len(w.Delete)+len(w.Update)+len(w.Create) == 0 }

// applied returns the entries after w, given those before and what the
// write returned.
func applied(have []store.Entry, w store.EntryWrites, out store.EntryWrites) []store.Entry {
	now := make([]store.Entry, 0, len(have)+len(out.Create))
	changed := map[string]store.Entry{}
	for _, e := range out.Update {
		changed[e.ID] = e
	}
	for _, e := range have {
		if slices.Contains(w.Delete, e.ID) {
			continue
		}
		if u, ok := changed[e.ID]; ok {
			e = u
		}
		now = append(now, e)
	}
	return append(now, out.Create...)
}

// sameContent: equal in every field a resource renders.
func sameContent(a, b *store.Entry) bool {
	return registry.Equal(a, b) && a.X509TTL == b.X509TTL && a.JWTTTL == b.JWTTTL &&
		slices.Equal(a.DNSNames, b.DNSNames) && a.Hint == b.Hint && a.Admin == b.Admin &&
		a.Owner != nil && b.Owner != nil && *a.Owner == *b.Owner
}

func podName(pod *corev1.Pod, have []store.Entry) string {
	switch {
	case pod != nil:
		return pod.Namespace + "/" + pod.Name
	case len(have) > 0:
		return have[0].Owner.Pod
	}
	return "(gone)"
}
