package registrar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/internal/logkey"
)

// Entries is what the registrar needs of the server's registry.
type Entries interface {
	WriteEntries(ctx context.Context, w store.EntryWrites) (store.EntryWrites, error)
	// Owned calls f with every entry owned by cluster (once, at start).
	Owned(cluster string, f func(e *store.Entry))
	// Validate checks and normalises an entry as a write would.
	Validate(e *store.Entry) error
	// FindEqual returns the ID of a stored entry equal to e, or "".
	FindEqual(e *store.Entry) string
}

// Config configures a Registrar.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// Cluster names the cluster in the entries' owner and in the parent IDs
	// (the k8s_psat agent IDs of its nodes): use the server's psat_cluster.
	Cluster string
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	Entries Entries
	// LeaderElection, when set, makes the registrar write only while it
	// holds the Lease it names.
	LeaderElection *LeaderElection
	// Workers reconcile keys in parallel (default 64): mostly they wait
	// for their write, which the batcher groups.
	Workers int
	// StatusInterval is how often changed resources get their status
	// written (default 2 s): a burst of pod changes is one status write.
	StatusInterval time.Duration
	Metrics        prometheus.Registerer
	Clock          clock.WithTicker
	Logger         *slog.Logger
}

// Registrar is the controller. Build it with New and start it with Run.
type Registrar struct {
	cfg     Config
	metrics *metrics
	log     *slog.Logger
}

// New checks cfg and returns a Registrar.
func New(cfg Config) (*Registrar, error) {
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("registrar: trust domain is required")
	case cfg.Cluster == "":
		return nil, errors.New("registrar: cluster name is required")
	case cfg.Kube == nil || cfg.Dynamic == nil:
		return nil, errors.New("registrar: kubernetes clients are required")
	case cfg.Entries == nil:
		return nil, errors.New("registrar: entries are required")
	}
	if err := spiffeid.ValidatePathSegment(cfg.Cluster); err != nil {
		return nil, fmt.Errorf("registrar: cluster name %q: %w", cfg.Cluster, err)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 64
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 2 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("registrar: metrics: %w", err)
	}
	return &Registrar{cfg: cfg, metrics: m, log: cfg.Logger.With(logkey.Component, "registrar", logkey.Cluster, cfg.Cluster)}, nil
}

// Run reconciles until ctx ends: at once, or each time it wins the Lease.
func (r *Registrar) Run(ctx context.Context) error {
	if r.cfg.LeaderElection == nil {
		return r.lead(ctx)
	}
	return r.elect(ctx)
}

// Queue keys: a pod by UID, a ClusterStaticEntry by name.
const (
	podKey    = "pod/"
	staticKey = "static/"
)

// term is one leadership term: caches, queue and the entries owned.
type term struct {
	*Registrar
	queue workqueue.TypedRateLimitingInterface[string]
	batch *batcher

	pods, nodes, namespaces, statics cache.SharedIndexInformer

	idMu       sync.RWMutex
	identities []*identity // sorted by name

	mu      sync.Mutex
	owned   map[types.UID][]store.Entry // pod UID → its entries
	static  map[string]store.Entry      // resource name → its entry
	since   map[string]time.Time        // key → when the event that queued it arrived
	status  *statusBook
	written int // entries owned, for the gauge
}

// lead runs one term until ctx ends.
func (r *Registrar) lead(ctx context.Context) error {
	t := &term{
		Registrar: r,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "registrar"}),
		batch:  newBatcher(r.cfg.Entries),
		owned:  map[types.UID][]store.Entry{},
		static: map[string]store.Entry{},
		since:  map[string]time.Time{},
	}
	defer t.queue.ShutDown()
	r.metrics.queue.set(t.queue.Len)
	defer r.metrics.queue.set(nil)
	return t.run(ctx)
}

func (t *term) run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(t.cfg.Kube, 0, informers.WithTransform(trim))
	t.pods = factory.Core().V1().Pods().Informer()
	t.nodes = factory.Core().V1().Nodes().Informer()
	t.namespaces = factory.Core().V1().Namespaces().Informer()
	if err := t.pods.AddIndexers(cache.Indexers{byUID: podUID, byNode: podNode}); err != nil {
		return fmt.Errorf("registrar: %w", err)
	}
	dyn := dynamicinformer.NewDynamicSharedInformerFactory(t.cfg.Dynamic, 0)
	idents := dyn.ForResource(clusterIdentities).Informer()
	t.statics = dyn.ForResource(clusterStaticEntries).Informer()

	t.handle(t.pods, func(obj any) { t.enqueuePod(obj) })
	t.handle(t.nodes, func(obj any) { t.enqueueIndexed(byNode, obj) })
	t.handle(t.namespaces, func(obj any) { t.enqueueIndexed(cache.NamespaceIndex, obj) })
	t.handle(t.statics, func(obj any) {
		if name, ok := objectName(obj); ok {
			t.add(staticKey + name)
		}
	})
	// The registrar's own status writes come back as updates: only a new
	// generation (a spec change; status is a subresource) can change what
	// the identities render, so only then is every pod queued again.
	_, _ = idents.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { t.identitiesChanged(idents, true) },
		UpdateFunc: func(old, obj any) {
			o, _ := old.(*unstructured.Unstructured)
			n, _ := obj.(*unstructured.Unstructured)
			t.identitiesChanged(idents, o == nil || n == nil || o.GetGeneration() != n.GetGeneration())
		},
		DeleteFunc: func(any) { t.identitiesChanged(idents, true) },
	})

	events := newEventRecorder(t.cfg.Kube)
	defer events.shutdown()
	t.status = newStatusBook(t, events)

	factory.Start(ctx.Done())
	dyn.Start(ctx.Done())
	defer factory.Shutdown()
	defer dyn.Shutdown()
	synced := []cache.InformerSynced{t.pods.HasSynced, t.nodes.HasSynced, t.namespaces.HasSynced, idents.HasSynced, t.statics.HasSynced}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return ctx.Err()
	}
	t.identitiesChanged(idents, true)
	t.loadOwned()
	t.log.Info("registrar started", logkey.Count, t.written)

	var wg sync.WaitGroup
	bctx, stopBatcher := context.WithCancel(context.Background())
	batcherDone := make(chan struct{})
	go func() { defer close(batcherDone); t.batch.run(bctx) }()
	// The batcher stops after the workers, which may wait on it.
	defer func() { stopBatcher(); <-batcherDone }()
	for range t.cfg.Workers {
		wg.Go(func() {
			for t.next(ctx) {
			}
		})
	}
	wg.Go(func() { t.status.run(ctx, t.cfg.StatusInterval) })
	<-ctx.Done()
	t.queue.ShutDown()
	wg.Wait()
	return nil
}

// handle calls f for every add, update and delete of inf's objects.
func (t *term) handle(inf cache.SharedIndexInformer, f func(obj any)) {
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    f,
		UpdateFunc: func(_, obj any) { f(obj) },
		DeleteFunc: f,
	})
}

// loadOwned reads the entries this cluster owns, once, and queues each of
// their keys, so that entries of pods and resources deleted while no
// registrar ran are deleted too.
func (t *term) loadOwned() {
	t.mu.Lock()
	t.cfg.Entries.Owned(t.cfg.Cluster, func(e *store.Entry) {
		switch {
		case e.Owner.PodUID != "":
			uid := types.UID(e.Owner.PodUID)
			t.owned[uid] = append(t.owned[uid], *e)
		default:
			t.static[e.Owner.Name] = *e
		}
		t.written++
	})
	keys := make([]string, 0, len(t.owned)+len(t.static))
	for uid := range t.owned {
		keys = append(keys, podKey+string(uid))
	}
	for name := range t.static {
		keys = append(keys, staticKey+name)
	}
	t.mu.Unlock()
	t.metrics.entries.Set(float64(t.written))
	for _, k := range keys {
		t.add(k)
	}
	for _, obj := range t.pods.GetStore().List() {
		t.enqueuePod(obj)
	}
	for _, name := range t.statics.GetStore().ListKeys() {
		t.add(staticKey + name)
	}
}

// add queues key, remembering when the first event for it arrived.
func (t *term) add(key string) {
	t.mu.Lock()
	if _, ok := t.since[key]; !ok {
		t.since[key] = t.cfg.Clock.Now()
	}
	t.mu.Unlock()
	t.queue.Add(key)
}

func (t *term) enqueuePod(obj any) {
	if pod, ok := podOf(obj); ok {
		t.add(podKey + string(pod.UID))
	}
}

// enqueueIndexed queues the pods that index idx files under obj's name (the
// pods of a node, or of a namespace).
func (t *term) enqueueIndexed(idx string, obj any) {
	name, ok := objectName(obj)
	if !ok {
		return
	}
	pods, err := t.pods.GetIndexer().ByIndex(idx, name)
	if err != nil {
		t.log.Error("pod index", logkey.Error, err)
		return
	}
	for _, p := range pods {
		t.enqueuePod(p)
	}
}

// identitiesChanged recompiles every ClusterIdentity and, if requeue,
// queues every pod: a change of one identity can move pods between
// identities (fallback, masking).
func (t *term) identitiesChanged(inf cache.SharedIndexInformer, requeue bool) {
	objs := inf.GetStore().List()
	ids := make([]*identity, 0, len(objs))
	for _, obj := range objs {
		if u, ok := obj.(*unstructured.Unstructured); ok {
			ids = append(ids, compileIdentity(u))
		}
	}
	slices.SortFunc(ids, func(a, b *identity) int { return strings.Compare(a.name, b.name) })
	t.idMu.Lock()
	t.identities = ids
	t.idMu.Unlock()
	if t.status != nil {
		t.status.identities(ids)
	}
	if !requeue {
		return
	}
	for _, obj := range t.pods.GetStore().List() {
		t.enqueuePod(obj)
	}
}

// next processes one key; false once the queue is shut down.
func (t *term) next(ctx context.Context) bool {
	key, shutdown := t.queue.Get()
	if shutdown {
		return false
	}
	defer t.queue.Done(key)
	wrote, err := t.reconcile(ctx, key)
	switch {
	case err != nil && ctx.Err() != nil:
		return false
	case err != nil:
		t.metrics.reconciles.WithLabelValues("error").Inc()
		t.log.Warn("reconcile failed; retrying", logkey.Key, key, logkey.Error, err)
		t.queue.AddRateLimited(key)
		return true
	case wrote:
		t.metrics.reconciles.WithLabelValues("written").Inc()
	default:
		t.metrics.reconciles.WithLabelValues("unchanged").Inc()
	}
	t.queue.Forget(key)
	t.mu.Lock()
	since, ok := t.since[key]
	delete(t.since, key)
	t.mu.Unlock()
	if ok && wrote {
		t.metrics.eventToEntry.Observe(t.cfg.Clock.Since(since).Seconds())
	}
	return true
}

// Informer indexes of pods.
const (
	byUID  = "uid"
	byNode = "node"
)

func podUID(obj any) ([]string, error) {
	if pod, ok := obj.(*corev1.Pod); ok {
		return []string{string(pod.UID)}, nil
	}
	return nil, nil
}

func podNode(obj any) ([]string, error) {
	if pod, ok := obj.(*corev1.Pod); ok && pod.Spec.NodeName != "" {
		return []string{pod.Spec.NodeName}, nil
	}
	return nil, nil
}

// podOf returns the pod of an informer notification, tombstones included.
func podOf(obj any) (*corev1.Pod, bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	return pod, ok
}

// objectName returns the name of an informer notification's object.
func objectName(obj any) (string, bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	o, ok := obj.(interface{ GetName() string })
	if !ok {
		return "", false
	}
	return o.GetName(), true
}

// trim drops from cached objects what the registrar never reads, so that
// the caches of a large cluster stay small: managed fields, the
// last-applied annotation, and all of a pod's status but its phase.
func trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		o.ManagedFields = nil
		delete(o.Annotations, corev1.LastAppliedConfigAnnotation)
		o.Status = corev1.PodStatus{Phase: o.Status.Phase}
	case *corev1.Node:
		o.ManagedFields = nil
		delete(o.Annotations, corev1.LastAppliedConfigAnnotation)
		o.Status = corev1.NodeStatus{}
	case *corev1.Namespace:
		o.ManagedFields = nil
	}
	return obj, nil
}
