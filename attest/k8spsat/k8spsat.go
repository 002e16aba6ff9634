// Package k8spsat attests agents with Kubernetes projected service-account
// tokens (PSAT). The agent (Client) presents the token the kubelet projects
// into its pod; the server (Attestor) refuses what cannot be such a token
// without asking anyone, has the apiserver review the rest, checks the
// service account against an allow-list and the bound pod against the live
// cluster, and names the agent after the node the pod runs on.
package k8spsat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/attest"
	"github.com/tallyid/tally/internal/reserved"
)

// Type is the attestation type name on the wire, and the type of the
// selectors the Attestor returns.
const Type = "k8s_psat"

// DefaultAudience is the token audience used when Config.Audience is empty.
const DefaultAudience = "tally-server"

// Keys of the TokenReview's user extra that bind a token to its pod and node.
const (
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
	extraNodeName = "authentication.kubernetes.io/node-name"
	extraNodeUID  = "authentication.kubernetes.io/node-uid"
)

const serviceAccountPrefix = "system:serviceaccount:"

// Config configures an Attestor.
type Config struct {
	// TrustDomain is the trust domain of the agent IDs. Required.
	TrustDomain spiffeid.TrustDomain
	// ClusterName names the cluster in agent IDs and in the "cluster"
	// selector. Required; must be a valid SPIFFE ID path segment.
	ClusterName string
	// Audience the token must be issued for. Default DefaultAudience.
	Audience string
	// ServiceAccounts allowed to attest, each "namespace:name". Required.
	ServiceAccounts []string
	// NodeLabelKeys are the node label keys that become agent_node_label
	// selectors; other labels are ignored. Optional.
	NodeLabelKeys []string
	// Cluster is the Kubernetes API (NewCluster). Required.
	Cluster Cluster
	// NodeCacheTTL is how long a node read from the apiserver is reused for
	// later attestations whose token is bound to the same node uid. Default
	// DefaultNodeCacheTTL; negative: every attestation reads its node.
	NodeCacheTTL time.Duration
	// Clock drives the token expiry check and the node cache. Default the
	// real clock.
	Clock clock.PassiveClock
	// Logger receives one line per refusal with the reason and the names and
	// UIDs the caller is not told. Default: discard.
	Logger *slog.Logger
}

// Attestor is the server side of k8s_psat attestation. It is safe for
// concurrent use.
type Attestor struct {
	td        spiffeid.TrustDomain
	cluster   string
	audience  string
	accounts  map[string]bool // "namespace:name"
	labelKeys []string        // sorted, unique
	api       Cluster
	nodes     *nodeCache
	clock     clock.PassiveClock
	log       *slog.Logger
}

// New validates cfg, fills its defaults and returns an Attestor.
func New(cfg Config) (*Attestor, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("k8spsat: config: TrustDomain is required")
	}
	if cfg.ClusterName == "" {
		return nil, errors.New("k8spsat: config: ClusterName is required")
	}
	if err := spiffeid.ValidatePathSegment(cfg.ClusterName); err != nil {
		return nil, fmt.Errorf("k8spsat: config: ClusterName %q: %w", cfg.ClusterName, err)
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	if len(cfg.ServiceAccounts) == 0 {
		return nil, errors.New("k8spsat: config: ServiceAccounts is required")
	}
	accounts := make(map[string]bool, len(cfg.ServiceAccounts))
	for _, sa := range cfg.ServiceAccounts {
		ns, name, ok := strings.Cut(sa, ":")
		if !ok || ns == "" || name == "" || strings.Contains(name, ":") {
			return nil, fmt.Errorf("k8spsat: config: ServiceAccounts: %q is not \"namespace:name\"", sa)
		}
		accounts[sa] = true
	}
	for _, k := range cfg.NodeLabelKeys {
		if k == "" {
			return nil, errors.New("k8spsat: config: NodeLabelKeys: empty key")
		}
	}
	if cfg.Cluster == nil {
		return nil, errors.New("k8spsat: config: Cluster is required")
	}
	if cfg.NodeCacheTTL == 0 {
		cfg.NodeCacheTTL = DefaultNodeCacheTTL
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	keys := slices.Clone(cfg.NodeLabelKeys)
	slices.Sort(keys)
	return &Attestor{
		td:        cfg.TrustDomain,
		cluster:   cfg.ClusterName,
		audience:  cfg.Audience,
		accounts:  accounts,
		labelKeys: slices.Compact(keys),
		api:       cfg.Cluster,
		nodes:     newNodeCache(cfg.NodeCacheTTL, cfg.Clock),
		clock:     cfg.Clock,
		log:       cfg.Logger,
	}, nil
}

// errRefused is the one refusal an unauthenticated caller sees, whatever
// the reason: it tells nothing of the allow-list or of the cluster's pods,
// nodes and UIDs. The reason goes to Config.Logger.
var errRefused = fmt.Errorf("%w: k8spsat: token not authenticated or not allowed (the server log says why)", attest.ErrDenied)

// Attest verifies the projected service-account token in data and returns
// the identity of the node its pod runs on:
// AgentID spiffe://<td>/tally/agent/k8s_psat/<cluster>/<node-uid>, the
// k8s_psat selectors cluster, agent_ns, agent_sa, agent_pod_name,
// agent_pod_uid, agent_node_name, agent_node_uid and
// agent_node_label:<key>:<value> for each configured key the node has, and
// CanReattest true.
//
// Before any apiserver call it refuses what cannot be a bound token of an
// allowed service account for the configured audience (see prefilter), so
// junk costs no TokenReview. It then refuses a token the apiserver does not
// authenticate for the audience, one of a service account that is not
// allowed, one not bound to a pod, one whose pod or node no longer exists or
// was recreated (different UID), and one whose pod is terminating (deletion
// requested) or finished (phase Failed or Succeeded): a new pod replaces it
// and attests.
//
// Every refusal is the same error, wrapping attest.ErrDenied, with no
// names, UIDs or allow-list decision in its text; the reason is logged (at
// debug level for what is not a JWT at all, info otherwise). Any other
// failure of the Kubernetes API is returned as a plain error for the
// server's log. The token never appears in an error or a log line.
//
// Apiserver calls: a TokenReview and a pod read per attestation, and a node
// read unless a node with the token's node uid was read less than
// NodeCacheTTL ago.
func (a *Attestor) Attest(ctx context.Context, data []byte) (attest.NodeResult, error) {
	res, d, err := a.attest(ctx, data)
	if d != nil {
		a.logRefusal(ctx, d)
		return attest.NodeResult{}, errRefused
	}
	return res, err
}

// denial is why an attestation was refused, for the log only.
type denial struct {
	reason, detail string
	attrs          []slog.Attr
}

func deny(reason, detail string, attrs ...slog.Attr) *denial {
	return &denial{reason: reason, detail: detail, attrs: attrs}
}

func (a *Attestor) logRefusal(ctx context.Context, d *denial) {
	level := slog.LevelInfo
	if d.reason == reasonMalformed {
		level = slog.LevelDebug // junk: no agent with a kubelet token sends it
	}
	attrs := append([]slog.Attr{slog.String(logReason, d.reason), slog.String(logDetail, d.detail)}, d.attrs...)
	a.log.LogAttrs(ctx, level, "k8s_psat attestation refused", attrs...)
}

// reviewed is what the apiserver confirmed of a token: its service account
// and the pod (and node) it is bound to, with the attributes to log.
type reviewed struct {
	ns, sa, podName, podUID string
	tokenNode, tokenNodeUID string
	attrs                   []slog.Attr
}

// review refuses junk before any apiserver call (prefilter), then has the
// apiserver review the token and checks what it confirmed: the audience,
// an allow-listed service account, the bound pod.
func (a *Attestor) review(ctx context.Context, data []byte) (reviewed, *denial, error) {
	if len(data) == 0 {
		return reviewed{}, deny(reasonMalformed, "empty token"), nil
	}
	claimed, r := prefilter(data, a.audience, a.accounts, a.clock.Now())
	if r != nil {
		return reviewed{}, deny(r.reason, r.detail), nil
	}
	token := string(data)
	// What the token says of itself, logged apart from what was verified.
	claimedAttrs := []slog.Attr{slog.Group(logUnverified,
		slog.String(logNamespace, claimed.namespace), slog.String(logServiceAccount, claimed.serviceAccount),
		slog.String(logPod, short(claimed.pod.Name)), slog.String(logPodUID, short(claimed.pod.UID)),
	)}

	status, err := a.api.ReviewToken(ctx, token, []string{a.audience})
	if err != nil {
		return reviewed{}, nil, fmt.Errorf("k8spsat: review token: %w", redactedError{err, token})
	}
	if !status.Authenticated {
		detail := "the apiserver did not authenticate the token"
		if status.Error != "" {
			detail += ": " + short(redact(status.Error, token))
		}
		return reviewed{}, deny(reasonNotAuthenticated, detail, claimedAttrs...), nil
	}
	// An authenticator that ignores audiences answers with its own; only an
	// explicit confirmation of ours counts.
	if !slices.Contains(status.Audiences, a.audience) {
		return reviewed{}, deny(reasonAudience, fmt.Sprintf("token not valid for audience %q (reviewed audiences %q)", a.audience, status.Audiences), claimedAttrs...), nil
	}

	user := status.User
	rest, ok := strings.CutPrefix(user.Username, serviceAccountPrefix)
	ns, sa, _ := strings.Cut(rest, ":")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return reviewed{}, deny(reasonNotServiceAccount, fmt.Sprintf("user %q is not a service account", user.Username)), nil
	}
	if !a.accounts[ns+":"+sa] {
		return reviewed{}, deny(reasonServiceAccount, fmt.Sprintf("service account %s:%s is not allowed", ns, sa)), nil
	}
	attrs := []slog.Attr{slog.String(logNamespace, ns), slog.String(logServiceAccount, sa)}

	podName, d := extra(user, extraPodName, true)
	if d != nil {
		return reviewed{}, d, nil
	}
	podUID, d := extra(user, extraPodUID, true)
	if d != nil {
		return reviewed{}, d, nil
	}
	tokenNode, d := extra(user, extraNodeName, false)
	if d != nil {
		return reviewed{}, d, nil
	}
	tokenNodeUID, d := extra(user, extraNodeUID, false)
	if d != nil {
		return reviewed{}, d, nil
	}
	attrs = append(attrs, slog.String(logPod, podName), slog.String(logPodUID, podUID))
	return reviewed{ns: ns, sa: sa, podName: podName, podUID: podUID, tokenNode: tokenNode, tokenNodeUID: tokenNodeUID, attrs: attrs}, nil, nil
}

// attest reviews the token, then checks the pod and the node it names as
// they are now, and derives the agent's ID and node selectors.
func (a *Attestor) attest(ctx context.Context, data []byte) (attest.NodeResult, *denial, error) {
	r, d, err := a.review(ctx, data)
	if d != nil || err != nil {
		return attest.NodeResult{}, d, err
	}
	ns, sa, podName, podUID, attrs := r.ns, r.sa, r.podName, r.podUID, r.attrs
	pod, err := a.api.GetPod(ctx, ns, podName)
	switch {
	case errors.Is(err, ErrNotFound):
		return attest.NodeResult{}, deny(reasonPodGone, "the pod no longer exists", attrs...), nil
	case err != nil:
		return attest.NodeResult{}, nil, fmt.Errorf("k8spsat: get pod %s/%s: %w", ns, podName, err)
	case pod == nil:
		return attest.NodeResult{}, nil, fmt.Errorf("k8spsat: get pod %s/%s: no pod and no error", ns, podName)
	}
	if d := checkPod(pod, podUID, sa, r.tokenNode); d != nil {
		d.attrs = append(attrs, d.attrs...)
		return attest.NodeResult{}, d, nil
	}
	nodeName := pod.Spec.NodeName
	attrs = append(attrs, slog.String(logNode, nodeName), slog.String(logTokenNodeUID, r.tokenNodeUID))

	node, d, err := a.node(ctx, nodeName, r.tokenNodeUID)
	if d != nil {
		d.attrs = append(attrs, d.attrs...)
		return attest.NodeResult{}, d, nil
	}
	if err != nil {
		return attest.NodeResult{}, nil, err
	}
	id, err := reserved.AgentID(a.td, Type, a.cluster, node.uid)
	if err != nil {
		return attest.NodeResult{}, nil, fmt.Errorf("k8spsat: agent ID for node %s uid %q: %w", nodeName, node.uid, err)
	}

	sels := []attest.Selector{
		selector("cluster", a.cluster),
		selector("agent_ns", ns),
		selector("agent_sa", sa),
		selector("agent_pod_name", podName),
		selector("agent_pod_uid", podUID),
		selector("agent_node_name", nodeName),
		selector("agent_node_uid", node.uid),
	}
	for _, k := range a.labelKeys {
		if v, ok := node.labels[k]; ok {
			sels = append(sels, selector("agent_node_label", k+":"+v))
		}
	}
	return attest.NodeResult{AgentID: id, Selectors: sels, CanReattest: true}, nil, nil
}

// checkPod refuses pod, read afresh, unless it is the one the token is bound
// to (uid), runs as sa, is scheduled (to tokenNode, when the token names
// one), is not terminating and has not finished. Pending counts as live: an
// agent may run before the kubelet reports the pod Running.
func checkPod(pod *corev1.Pod, uid, sa, tokenNode string) *denial {
	switch {
	case string(pod.UID) != uid:
		return deny(reasonPodRecreated, "the pod has another uid: it was recreated", slog.String(logLiveUID, string(pod.UID)))
	case pod.Spec.ServiceAccountName != sa:
		return deny(reasonPodServiceAccount, fmt.Sprintf("the pod runs as service account %q", pod.Spec.ServiceAccountName))
	case pod.Spec.NodeName == "":
		return deny(reasonPodNode, "the pod is not scheduled to a node")
	case tokenNode != "" && tokenNode != pod.Spec.NodeName:
		return deny(reasonPodNode, fmt.Sprintf("the pod runs on node %s, the token is bound to node %s", pod.Spec.NodeName, tokenNode))
	case pod.DeletionTimestamp != nil:
		return deny(reasonPodTerminating, "the pod is terminating (deletion requested at "+
			pod.DeletionTimestamp.Add(-gracePeriod(pod)).UTC().Format(time.RFC3339)+")")
	case pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded:
		return deny(reasonPodFinished, "the pod has finished (phase "+string(pod.Status.Phase)+")")
	}
	return nil
}

// gracePeriod is the pod's deletion grace period: its deletionTimestamp is
// the request time plus this.
func gracePeriod(pod *corev1.Pod) time.Duration {
	if pod.DeletionGracePeriodSeconds == nil {
		return 0
	}
	return time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
}

// node returns the node name the pod runs on, from the cache when the token
// is bound to the cached node's uid, otherwise read from the apiserver (and
// cached). A token without a node uid (apiservers before pod-node-info)
// always reads the node: nothing else tells a recreated node apart.
func (a *Attestor) node(ctx context.Context, name, tokenUID string) (cachedNode, *denial, error) {
	if tokenUID != "" {
		if n, ok := a.nodes.get(name); ok && n.uid == tokenUID {
			return n, nil, nil
		}
	}
	node, err := a.api.GetNode(ctx, name)
	switch {
	case errors.Is(err, ErrNotFound):
		a.nodes.forget(name)
		return cachedNode{}, deny(reasonNodeGone, "the node no longer exists"), nil
	case err != nil:
		return cachedNode{}, nil, fmt.Errorf("k8spsat: get node %s: %w", name, err)
	case node == nil:
		return cachedNode{}, nil, fmt.Errorf("k8spsat: get node %s: no node and no error", name)
	}
	n := cachedNode{uid: string(node.UID), labels: make(map[string]string)}
	for _, k := range a.labelKeys {
		if v, ok := node.Labels[k]; ok {
			n.labels[k] = v
		}
	}
	a.nodes.put(name, n)
	if tokenUID != "" && tokenUID != n.uid {
		return cachedNode{}, deny(reasonNodeRecreated, "the node has another uid: it was recreated", slog.String(logLiveUID, n.uid)), nil
	}
	return n, nil, nil
}

func selector(name, value string) attest.Selector {
	return attest.Selector{Type: Type, Value: name + ":" + value}
}

// extra returns the single value of the user extra key: "" if it is absent
// and not required, a refusal if it is absent and required, or if it has
// more than one value or an empty one.
func extra(user authv1.UserInfo, key string, required bool) (string, *denial) {
	vs, ok := user.Extra[key]
	switch {
	case !ok && !required:
		return "", nil
	case !ok:
		return "", deny(reasonNotPodBound, "the reviewed token is not bound to a pod: no "+key)
	case len(vs) != 1 || vs[0] == "":
		return "", deny(reasonNotPodBound, fmt.Sprintf("the reviewed token has %d values for %s, want one non-empty", len(vs), key))
	}
	return vs[0], nil
}

// redact replaces token in s.
func redact(s, token string) string {
	if token == "" {
		return s
	}
	return strings.ReplaceAll(s, token, "[token]")
}

// redactedError keeps a token a Cluster put into its error out of the text.
type redactedError struct {
	err   error
	token string
}

func (e redactedError) Error() string { return redact(e.err.Error(), e.token) }
func (e redactedError) Unwrap() error { return e.err }
