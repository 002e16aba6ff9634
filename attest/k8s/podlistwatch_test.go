package k8s

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"

	"github.com/tallyid/tally/attest"
)

// podAPI is an HTTP server answering GET /api/v1/pods as the API server
// does: a v1 PodList at a resourceVersion, or, with watch=true, a stream of
// newline-delimited watch events ({"type":..., "object":...}) from a
// resourceVersion on, both filtered by the request's field selector. With
// watchList it also streams the initial state of a watch with
// sendInitialEvents=true, ended by the "k8s.io/initial-events-end"
// bookmark; without, it refuses sendInitialEvents with 422 as an API server
// without the WatchList feature does.
type podAPI struct {
	srv       *httptest.Server
	watchList bool
	stop      chan struct{}

	mu       sync.Mutex
	rv       int
	pods     map[string]corev1.Pod // by namespace/name
	events   []podEvent            // every change since the start
	changed  chan struct{}         // closed and replaced on each change
	requests []url.Values          // the query of each request
	listRVs  []string              // the resourceVersion of each list served
}

// podEvent is a watch event as the API server sends it.
type podEvent struct {
	Type   watch.EventType `json:"type"`
	Object corev1.Pod      `json:"object"`
}

func newPodAPI(t *testing.T, watchList bool, pods ...corev1.Pod) *podAPI {
	t.Helper()
	f := &podAPI{watchList: watchList, stop: make(chan struct{}), pods: map[string]corev1.Pod{}, changed: make(chan struct{})}
	for _, p := range pods {
		f.rv++
		p.ResourceVersion = strconv.Itoa(f.rv)
		f.pods[p.Namespace+"/"+p.Name] = p
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() { close(f.stop); f.srv.Close() })
	return f
}

// change applies an event of typ for p, as a client's write would.
func (f *podAPI) change(typ watch.EventType, p corev1.Pod) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rv++
	p.ResourceVersion = strconv.Itoa(f.rv)
	if typ == watch.Deleted {
		delete(f.pods, p.Namespace+"/"+p.Name)
	} else {
		f.pods[p.Namespace+"/"+p.Name] = p
	}
	f.events = append(f.events, podEvent{Type: typ, Object: p})
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *podAPI) queries() []url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

func (f *podAPI) lists() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.listRVs)
}

func (f *podAPI) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || r.URL.Path != "/api/v1/pods" {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "the server could not find the requested resource")
		return
	}
	q := r.URL.Query()
	f.mu.Lock()
	f.requests = append(f.requests, q)
	f.mu.Unlock()
	sel, err := fields.ParseSelector(q.Get("fieldSelector"))
	if err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	matches := func(p corev1.Pod) bool {
		return sel.Matches(fields.Set{"metadata.namespace": p.Namespace, "metadata.name": p.Name, "spec.nodeName": p.Spec.NodeName})
	}
	if q.Get("watch") != "true" {
		f.list(w, matches)
		return
	}
	f.watch(w, r, q, matches)
}

func (f *podAPI) list(w http.ResponseWriter, matches func(corev1.Pod) bool) {
	f.mu.Lock()
	list := corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}, ListMeta: metav1.ListMeta{ResourceVersion: strconv.Itoa(f.rv)}}
	for _, p := range f.pods {
		if matches(p) {
			list.Items = append(list.Items, p)
		}
	}
	f.listRVs = append(f.listRVs, list.ResourceVersion)
	f.mu.Unlock()
	slices.SortFunc(list.Items, compareKeys)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(list)
}

func compareKeys(a, b corev1.Pod) int {
	return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
}

func (f *podAPI) watch(w http.ResponseWriter, r *http.Request, q url.Values, matches func(corev1.Pod) bool) {
	initial := q.Get("sendInitialEvents") == "true"
	if initial && !f.watchList {
		writeStatus(w, http.StatusUnprocessableEntity, metav1.StatusReasonInvalid,
			`ListOptions.meta.k8s.io "" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled`)
		return
	}
	f.mu.Lock()
	var out []podEvent
	next := len(f.events)
	if initial {
		for _, p := range f.pods {
			if matches(p) {
				out = append(out, podEvent{Type: watch.Added, Object: p})
			}
		}
		slices.SortFunc(out, func(a, b podEvent) int { return compareKeys(a.Object, b.Object) })
		out = append(out, podEvent{Type: watch.Bookmark, Object: corev1.Pod{
			TypeMeta:   metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{ResourceVersion: strconv.Itoa(f.rv), Annotations: map[string]string{metav1.InitialEventsAnnotationKey: "true"}},
		}})
	} else if from, err := strconv.Atoi(q.Get("resourceVersion")); err == nil && from > 0 {
		// Resume after from: the events with a later resourceVersion.
		if i := slices.IndexFunc(f.events, func(e podEvent) bool { return atoi(e.Object.ResourceVersion) > from }); i >= 0 {
			out = slices.Clone(f.events[i:])
		}
	}
	changed := f.changed
	f.mu.Unlock()

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w) // one event per line
	for {
		for _, e := range out {
			if e.Type == watch.Bookmark || matches(e.Object) {
				if err := enc.Encode(e); err != nil {
					return
				}
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		case <-f.stop:
			return
		}
		f.mu.Lock()
		out = slices.Clone(f.events[next:])
		next = len(f.events)
		changed = f.changed
		f.mu.Unlock()
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// writeStatus writes a metav1.Status error, as the API server does.
func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status: metav1.StatusFailure, Code: int32(code), Reason: reason, Message: msg})
}

// TestPodListWatch runs the apiserver pod source on PodListWatch against
// podAPI, both ways client-go's reflector starts: a list and then a watch
// from its resourceVersion (the API server refuses watch-list), and a
// watch-list. The source follows pods added, modified and deleted.
func TestPodListWatch(t *testing.T) {
	tests := []struct {
		name      string
		watchList bool
	}{
		{name: "list then watch", watchList: false},
		{name: "watch list", watchList: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			elsewhere := pod("shop", "web-on-node-2", uidOther, status("app", cid("104"), "registry.example.com/shop/web:1.4.2"))
			elsewhere.Spec.NodeName = "node-2"
			api := newPodAPI(t, tt.watchList, append(fillerPods(3), webPod(), elsewhere)...)
			pods, err := PodListWatch(&rest.Config{Host: api.srv.URL}, "node-1")
			require.NoError(t, err)
			a := startAPIServerAttestor(t, pods, Config{RetryFor: -1})
			src := a.src.(*apiserverSource)

			// The pods of node-1 are listed; the pod of node-2, whose
			// container ID 104 is reused below, is not.
			sels, err := a.Attest(t.Context(), attest.Process{PID: 101})
			require.NoError(t, err)
			assert.Contains(t, sels, sel("pod-name:web-7d9f8b6c5-x2x9q"))
			assert.Len(t, src.informer.GetStore().ListKeys(), 4)

			// ADDED
			db := pod("shop", "db-0", uidBestEffort, status("db", cid("104"), "docker.io/library/postgres:17"))
			api.change(watch.Added, db)
			require.Eventually(t, func() bool {
				f, err := src.find(t.Context(), uidBestEffort, cid("104"), 0)
				return err == nil && len(f.pods) == 1
			}, 10*time.Second, time.Millisecond, "the watch delivers the new pod")
			sels, err = a.Attest(t.Context(), attest.Process{PID: 104})
			require.NoError(t, err)
			assert.Contains(t, sels, sel("pod-name:db-0"))

			// MODIFIED
			web := webPod()
			web.Labels["version"] = "v2"
			api.change(watch.Modified, web)
			require.Eventually(t, func() bool {
				f, err := src.find(t.Context(), uidBurstable, cid("101"), 0)
				return err == nil && len(f.pods) == 1 && f.pods[0].Labels["version"] == "v2"
			}, 10*time.Second, time.Millisecond, "the watch delivers the change")
			sels, err = a.Attest(t.Context(), attest.Process{PID: 101})
			require.NoError(t, err)
			assert.Contains(t, sels, sel("pod-label:version:v2"))

			// DELETED
			api.change(watch.Deleted, web)
			require.Eventually(t, func() bool {
				f, err := src.find(t.Context(), uidBurstable, cid("101"), 0)
				return err == nil && len(f.pods) == 0 && f.byUID == nil
			}, 10*time.Second, time.Millisecond, "the watch delivers the deletion")
			_, err = a.Attest(t.Context(), attest.Process{PID: 101})
			require.Error(t, err)
			assert.Contains(t, err.Error(), "pod uid "+uidBurstable+" is not listed")
			_, err = a.Attest(t.Context(), attest.Process{PID: 104})
			require.NoError(t, err, "the other pods stay")

			// Every request asks for node-1's pods only.
			qs := api.queries()
			require.NotEmpty(t, qs)
			for _, q := range qs {
				assert.Equal(t, "spec.nodeName=node-1", q.Get("fieldSelector"), "%v", q)
			}
			first := qs[0]
			assert.Equal(t, "true", first.Get("watch"), "client-go tries a watch-list first")
			assert.Equal(t, "true", first.Get("sendInitialEvents"))
			if tt.watchList {
				assert.Empty(t, api.lists(), "the watch-list replaces the list")
				return
			}
			// Refused, it lists, then watches from the list's resourceVersion.
			require.Len(t, api.lists(), 1)
			require.GreaterOrEqual(t, len(qs), 3)
			assert.NotEqual(t, "true", qs[1].Get("watch"), "a list")
			assert.Equal(t, "true", qs[2].Get("watch"))
			assert.Empty(t, qs[2].Get("sendInitialEvents"))
			assert.Equal(t, api.lists()[0], qs[2].Get("resourceVersion"), "the watch resumes at the list")
		})
	}
}
