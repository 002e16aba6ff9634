// Package k8spsat attests agents with Kubernetes projected service-account
// tokens (PSAT). The agent (Client) presents the token the kubelet projects
// into its pod; the server (Attestor) has the apiserver review it, checks the
// service account against an allow-list and the bound pod against the live
// cluster, and names the agent after the node the pod runs on.
package k8spsat

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authv1 "k8s.io/api/authentication/v1"

	"github.com/tallyid/tally/attest"
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
	keys := slices.Clone(cfg.NodeLabelKeys)
	slices.Sort(keys)
	return &Attestor{
		td:        cfg.TrustDomain,
		cluster:   cfg.ClusterName,
		audience:  cfg.Audience,
		accounts:  accounts,
		labelKeys: slices.Compact(keys),
		api:       cfg.Cluster,
	}, nil
}

// Attest verifies the projected service-account token in data and returns
// the identity of the node its pod runs on:
// AgentID spiffe://<td>/tally/agent/k8s_psat/<cluster>/<node-uid>, the
// k8s_psat selectors cluster, agent_ns, agent_sa, agent_pod_name,
// agent_pod_uid, agent_node_name, agent_node_uid and
// agent_node_label:<key>:<value> for each configured key the node has, and
// CanReattest true.
//
// It refuses, with an error wrapping attest.ErrDenied, a token the apiserver
// does not authenticate for the configured audience, one of a service account
// that is not allowed, one not bound to a pod, and one whose pod or node no
// longer exists or was recreated (different UID). Any other failure of the
// Kubernetes API is returned as a plain error. The token never appears in an
// error.
func (a *Attestor) Attest(ctx context.Context, data []byte) (attest.NodeResult, error) {
	token := string(data)
	if token == "" {
		return attest.NodeResult{}, denied("empty token")
	}

	status, err := a.api.ReviewToken(ctx, token, []string{a.audience})
	if err != nil {
		return attest.NodeResult{}, fmt.Errorf("k8spsat: review token: %w", redactedError{err, token})
	}
	if !status.Authenticated {
		if status.Error != "" {
			return attest.NodeResult{}, denied("token not authenticated: %s", redact(status.Error, token))
		}
		return attest.NodeResult{}, denied("token not authenticated")
	}
	// An authenticator that ignores audiences answers with its own; only an
	// explicit confirmation of ours counts.
	if !slices.Contains(status.Audiences, a.audience) {
		return attest.NodeResult{}, denied("token not valid for audience %q (reviewed audiences %q)", a.audience, status.Audiences)
	}

	user := status.User
	rest, ok := strings.CutPrefix(user.Username, serviceAccountPrefix)
	ns, sa, _ := strings.Cut(rest, ":")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return attest.NodeResult{}, denied("user %q is not a service account", user.Username)
	}
	if !a.accounts[ns+":"+sa] {
		return attest.NodeResult{}, denied("service account %s:%s is not allowed", ns, sa)
	}

	podName, err := extra(user, extraPodName, true)
	if err != nil {
		return attest.NodeResult{}, err
	}
	podUID, err := extra(user, extraPodUID, true)
	if err != nil {
		return attest.NodeResult{}, err
	}
	tokenNode, err := extra(user, extraNodeName, false)
	if err != nil {
		return attest.NodeResult{}, err
	}
	tokenNodeUID, err := extra(user, extraNodeUID, false)
	if err != nil {
		return attest.NodeResult{}, err
	}

	pod, err := a.api.GetPod(ctx, ns, podName)
	switch {
	case errors.Is(err, ErrNotFound):
		return attest.NodeResult{}, denied("pod %s/%s no longer exists", ns, podName)
	case err != nil:
		return attest.NodeResult{}, fmt.Errorf("k8spsat: get pod %s/%s: %w", ns, podName, err)
	case pod == nil:
		return attest.NodeResult{}, fmt.Errorf("k8spsat: get pod %s/%s: no pod and no error", ns, podName)
	}
	if string(pod.UID) != podUID {
		return attest.NodeResult{}, denied("pod %s/%s has uid %s, token is bound to uid %s (pod recreated)", ns, podName, pod.UID, podUID)
	}
	if pod.Spec.ServiceAccountName != sa {
		return attest.NodeResult{}, denied("pod %s/%s runs as service account %q, token is for %q", ns, podName, pod.Spec.ServiceAccountName, sa)
	}
	nodeName := pod.Spec.NodeName
	if nodeName == "" {
		return attest.NodeResult{}, denied("pod %s/%s is not scheduled to a node", ns, podName)
	}
	if tokenNode != "" && tokenNode != nodeName {
		return attest.NodeResult{}, denied("pod %s/%s runs on node %s, token is bound to node %s", ns, podName, nodeName, tokenNode)
	}

	node, err := a.api.GetNode(ctx, nodeName)
	switch {
	case errors.Is(err, ErrNotFound):
		return attest.NodeResult{}, denied("node %s no longer exists", nodeName)
	case err != nil:
		return attest.NodeResult{}, fmt.Errorf("k8spsat: get node %s: %w", nodeName, err)
	case node == nil:
		return attest.NodeResult{}, fmt.Errorf("k8spsat: get node %s: no node and no error", nodeName)
	}
	nodeUID := string(node.UID)
	if tokenNodeUID != "" && tokenNodeUID != nodeUID {
		return attest.NodeResult{}, denied("node %s has uid %s, token is bound to uid %s (node recreated)", nodeName, nodeUID, tokenNodeUID)
	}
	id, err := spiffeid.FromSegments(a.td, "tally", "agent", Type, a.cluster, nodeUID)
	if err != nil {
		return attest.NodeResult{}, fmt.Errorf("k8spsat: agent ID for node %s uid %q: %w", nodeName, nodeUID, err)
	}

	sels := []attest.Selector{
		selector("cluster", a.cluster),
		selector("agent_ns", ns),
		selector("agent_sa", sa),
		selector("agent_pod_name", podName),
		selector("agent_pod_uid", podUID),
		selector("agent_node_name", nodeName),
		selector("agent_node_uid", nodeUID),
	}
	for _, k := range a.labelKeys {
		if v, ok := node.Labels[k]; ok {
			sels = append(sels, selector("agent_node_label", k+":"+v))
		}
	}
	return attest.NodeResult{AgentID: id, Selectors: sels, CanReattest: true}, nil
}

func selector(name, value string) attest.Selector {
	return attest.Selector{Type: Type, Value: name + ":" + value}
}

// extra returns the single value of the user extra key: "" if it is absent
// and not required, a refusal if it is absent and required, or if it has
// more than one value or an empty one.
func extra(user authv1.UserInfo, key string, required bool) (string, error) {
	vs, ok := user.Extra[key]
	switch {
	case !ok && !required:
		return "", nil
	case !ok:
		return "", denied("token is not bound to a pod: no %s", key)
	case len(vs) != 1 || vs[0] == "":
		return "", denied("token has %d values for %s, want one non-empty", len(vs), key)
	}
	return vs[0], nil
}

func denied(format string, args ...any) error {
	return fmt.Errorf("%w: k8spsat: %s", attest.ErrDenied, fmt.Sprintf(format, args...))
}

// redact replaces token in s.
func redact(s, token string) string {
	return strings.ReplaceAll(s, token, "[token]")
}

// redactedError keeps a token a Cluster put into its error out of the text.
type redactedError struct {
	err   error
	token string
}

func (e redactedError) Error() string { return redact(e.err.Error(), e.token) }
func (e redactedError) Unwrap() error { return e.err }
