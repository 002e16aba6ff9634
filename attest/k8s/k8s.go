// Package k8s attests workloads by the Kubernetes pod they run in: the
// process's cgroups name its pod and container, and the pod, found on this
// node's kubelet or through a watch of the API server, gives the selectors.
package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/internal/backoff"
	"github.com/tallyid/tally/internal/logkey"
)

// Type is the selector type this attestor produces: "k8s:ns:default" is
// Selector{Type: "k8s", Value: "ns:default"}.
const Type = "k8s"

// Pod sources (Config.PodSource).
const (
	// SourceKubelet reads GET /pods of this node's kubelet.
	SourceKubelet = "kubelet"
	// SourceAPIServer watches this node's pods on the API server.
	SourceAPIServer = "apiserver"
)

// Defaults of Config.
const (
	DefaultKubeletURL = "https://127.0.0.1:10250"
	DefaultCAFile     = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	DefaultTokenPath  = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	DefaultProcRoot   = "/proc"
	DefaultRetryFor   = 2 * time.Second
)

const (
	// kubeletCacheTTL is how long one GET /pods answers: a burst of
	// attestations makes one request.
	kubeletCacheTTL = time.Second
	// The wait between two looks for a container not listed yet grows from
	// firstBackoff to maxBackoff.
	firstBackoff = 50 * time.Millisecond
	maxBackoff   = 400 * time.Millisecond
)

// Config configures an Attestor.
type Config struct {
	// NodeName is this node's name. Required for SourceAPIServer (it selects
	// the pods to watch).
	NodeName string
	// PodSource is where pods are looked up: SourceKubelet (default) or
	// SourceAPIServer.
	PodSource string

	// KubeletURL is the kubelet's HTTPS endpoint (SourceKubelet). Default
	// DefaultKubeletURL. Plain http is refused.
	KubeletURL string
	// KubeletCAFile holds the PEM CA certificates that the kubelet's serving
	// certificate must chain to (SourceKubelet). Read once, by New. Default
	// DefaultCAFile. There is no way to skip verification.
	KubeletCAFile string
	// KubeletServerName is the name the kubelet's serving certificate must
	// carry, when it is not the host of KubeletURL (the usual case for
	// https://127.0.0.1:10250: a kubelet's certificate names the node).
	// Default: the host of KubeletURL.
	KubeletServerName string
	// TokenPath is the file whose bearer token authenticates to the kubelet
	// (SourceKubelet). It is read again for every request, so a rotated
	// token is used as soon as it is written. Default DefaultTokenPath.
	TokenPath string

	// Pods lists and watches this node's pods on the API server
	// (SourceAPIServer; required there). PodListWatch builds it from a
	// rest.Config.
	Pods cache.ListerWatcher

	// ProcRoot is where procfs is mounted. Default DefaultProcRoot.
	ProcRoot string
	// RetryFor is how long Attest keeps looking for a container that its
	// cgroups name but that no pod lists yet (it has just started).
	// Default DefaultRetryFor; negative: look once.
	RetryFor time.Duration
	// Clock drives the pod cache and the retries. Default: the real clock.
	Clock clock.Clock
	// Logger receives debug lines about lookups. Default: discard.
	Logger *slog.Logger
}

// podSource finds this node's pods by container. Implementations are safe
// for concurrent use.
type podSource interface {
	// find returns the pods whose status lists containerID (as found), and the
	// pod whose cgroups carry podUID, if listed (found.byUID). seen is the
	// generation of an earlier answer that lacked the container, 0 if none:
	// the source then answers from newer data if it has generations.
	find(ctx context.Context, podUID, containerID string, seen uint64) (found, error)
	// run keeps the source up to date until ctx is done.
	run(ctx context.Context) error
}

// found is a podSource's answer. Its pods are shared: read only.
type found struct {
	pods  []*corev1.Pod
	byUID *corev1.Pod
	gen   uint64
}

// errNotSynced is returned by a podSource that has no pod list yet.
var errNotSynced = errors.New("pod watch not synced yet")

// Attestor derives k8s selectors for a process. It is safe for concurrent use.
type Attestor struct {
	procRoot string
	retryFor time.Duration
	clock    clock.Clock
	log      *slog.Logger
	src      podSource
}

// New checks cfg, fills its defaults and returns an Attestor. For
// SourceKubelet it reads KubeletCAFile; for SourceAPIServer it prepares the
// watch, which Run starts. Errors name the Config field at fault.
func New(cfg Config) (*Attestor, error) {
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = DefaultProcRoot
	}
	if cfg.RetryFor == 0 {
		cfg.RetryFor = DefaultRetryFor
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Attestor{procRoot: cfg.ProcRoot, retryFor: max(cfg.RetryFor, 0), clock: cfg.Clock, log: cfg.Logger}
	var err error
	switch cfg.PodSource {
	case "", SourceKubelet:
		a.src, err = newKubeletSource(cfg)
	case SourceAPIServer:
		a.src, err = newAPIServerSource(cfg)
	default:
		err = fmt.Errorf("k8s: PodSource %q: want %q or %q", cfg.PodSource, SourceKubelet, SourceAPIServer)
	}
	if err != nil {
		return nil, err
	}
	return a, nil
}

// Run keeps the pod source going until ctx is done, then returns nil: the
// watch of this node's pods for SourceAPIServer (Attest waits for its first
// list), nothing for SourceKubelet. Call it once.
func (a *Attestor) Run(ctx context.Context) error {
	return a.src.run(ctx)
}

// Attest returns the k8s selectors of process pid's container, in this
// order:
//
//	k8s:ns:<namespace>
//	k8s:sa:<service account>         if set
//	k8s:pod-name:<name>
//	k8s:pod-uid:<uid>                the pod object's UID (a static pod's: the
//	                                 kubelet's UID from the kubelet, the mirror
//	                                 pod's from the API server)
//	k8s:node-name:<node>             if set
//	k8s:pod-label:<key>:<value>      each label, by key
//	k8s:pod-owner:<kind>:<name>      each owner reference, in order
//	k8s:container-name:<name>        the container, init container or
//	                                 ephemeral container whose status has the
//	                                 cgroups' container ID
//	k8s:container-image:<image>      the image the runtime reports
//	k8s:container-image:<image ID>   if set and different
//
// and otherwise:
//
//   - A process in no pod (its cgroups name none) gets no selectors and no
//     error: other attestors may still describe it.
//   - A process whose cgroups name more than one pod or container, a
//     container listed by more than one pod, or by another pod than the
//     cgroups name: the error wraps ErrAmbiguous.
//   - A process in a pod's cgroup but in none of its containers: an error.
//   - A container no pod lists yet is looked for again, with growing waits
//     and fresh pod lists, for Config.RetryFor; then the error says "no pod
//     with container <id>".
//   - A kubelet that cannot be reached, is not trusted (TLS) or refuses the
//     token: an error, at once.
//   - pid names no process: the error wraps attest.ErrDenied.
//
// Attest does not know whether pid still names the process the caller
// means: the caller checks that after Attest returns.
func (a *Attestor) Attest(ctx context.Context, p attest.Process) ([]attest.Selector, error) {
	pid := p.PID
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if pid <= 0 {
		return nil, fmt.Errorf("%w: k8s: invalid pid %d", attest.ErrDenied, pid)
	}
	ids, err := readCgroup(a.procRoot, pid)
	if err != nil {
		return nil, err
	}
	if ids.PodUID == "" {
		return nil, nil
	}
	pod, err := a.findPod(ctx, ids)
	if err != nil {
		return nil, err
	}
	return selectors(pod, containerStatus(pod, ids.ContainerID)), nil
}

// findPod returns the one pod that lists ids.ContainerID, retrying for
// a.retryFor while none does.
func (a *Attestor) findPod(ctx context.Context, ids cgroupIDs) (*corev1.Pod, error) {
	start := a.clock.Now()
	waits := &backoff.Backoff{Min: firstBackoff, Max: maxBackoff} // no jitter: a poll, not a retry storm
	var seen uint64
	for {
		f, err := a.src.find(ctx, ids.PodUID, ids.ContainerID, seen)
		if err != nil && !errors.Is(err, errNotSynced) {
			return nil, err
		}
		switch {
		case err != nil:
			// No pod list yet: look again.
		case len(f.pods) == 1 && hasUID(f.pods[0], ids.PodUID):
			return f.pods[0], nil
		case len(f.pods) == 1:
			p := f.pods[0]
			return nil, fmt.Errorf("%w: cgroups name pod %s but container %s belongs to pod %s/%s (uid %s)",
				ErrAmbiguous, ids.PodUID, ids.ContainerID, p.Namespace, p.Name, p.UID)
		case len(f.pods) > 1:
			names := make([]string, len(f.pods))
			for i, p := range f.pods {
				names[i] = p.Namespace + "/" + p.Name
			}
			return nil, fmt.Errorf("%w: container %s is listed by pods %s", ErrAmbiguous, ids.ContainerID, strings.Join(names, ", "))
		}
		seen = f.gen
		left := a.retryFor - a.clock.Since(start)
		if left <= 0 {
			switch {
			case err != nil:
				return nil, fmt.Errorf("k8s: no pod with container %s: %w", ids.ContainerID, err)
			case f.byUID != nil:
				return nil, fmt.Errorf("k8s: no pod with container %s: pod %s/%s (uid %s) does not list it", ids.ContainerID, f.byUID.Namespace, f.byUID.Name, ids.PodUID)
			default:
				return nil, fmt.Errorf("k8s: no pod with container %s (pod uid %s is not listed)", ids.ContainerID, ids.PodUID)
			}
		}
		a.log.Debug("container not listed yet, looking again", logkey.PodUID, ids.PodUID, logkey.ContainerID, ids.ContainerID, logkey.Error, err)
		t := a.clock.NewTimer(min(waits.Next(), left))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C():
		}
	}
}
