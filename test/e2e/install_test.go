package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	agentapp "github.com/tallyid/tally/internal/app/agent"
	serverapp "github.com/tallyid/tally/internal/app/server"
	"github.com/tallyid/tally/internal/config"
	"github.com/tallyid/tally/test/internal/deploy"
	"github.com/tallyid/tally/test/internal/k8s"
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	root, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
	if err != nil {
		panic(err)
	}
	return root
}

// install is one rendering of Tally's manifests into a namespace of its own.
type install struct {
	ns             string
	server, agent  string // service account names
	objects        []*unstructured.Unstructured
	serverConfigCM string
	agentConfigCM  string
}

// TestInstall renders the kustomize base (deploy/base) and the Helm chart
// (deploy/helm/tally, after helm lint), applies both to a real
// kube-apiserver with server-side apply in namespaces of their own (CRDs
// first, until Established), and checks the CRDs' validation, the RBAC
// each install grants, and that the configs in the ConfigMaps load.
func TestInstall(t *testing.T) {
	t.Parallel()
	c := cluster.Get(t)
	root := repoRoot()

	// The chart's CRDs are copies of deploy/crds.
	crds, err := filepath.Glob(filepath.Join(root, "deploy", "crds", "tally.dev_*.yaml"))
	require.NoError(t, err)
	require.Len(t, crds, 3)
	for _, f := range crds {
		want, err := os.ReadFile(f)
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join(root, "deploy", "helm", "tally", "crds", filepath.Base(f)))
		require.NoError(t, err)
		require.Equal(t, string(want), string(got), "deploy/helm/tally/crds/%s differs from deploy/crds", filepath.Base(f))
	}

	kust := renderKustomize(t, c, filepath.Join(root, "deploy", "base"))
	chart := renderHelm(t, c, filepath.Join(root, "deploy", "helm", "tally"))
	for _, in := range []*install{kust, chart} {
		kinds := map[string]int{}
		for _, o := range in.objects {
			kinds[o.GetKind()]++
		}
		require.Equal(t, map[string]int{
			"CustomResourceDefinition": 3, "ServiceAccount": 2, "ClusterRole": 2, "ClusterRoleBinding": 2,
			"Role": 1, "RoleBinding": 1, "ConfigMap": 2, "Service": 1, "StatefulSet": 1,
			"PodDisruptionBudget": 1, "DaemonSet": 1,
		}, kinds, "objects of the %s install", in.ns)
	}

	ctx := context.Background()
	dyn, err := dynamic.NewForConfig(c.Config)
	require.NoError(t, err)
	// CRDs first, from both installs (they are the same objects), until
	// the apiserver serves them.
	for _, in := range []*install{kust, chart} {
		for _, o := range in.objects {
			if o.GetKind() == "CustomResourceDefinition" {
				applyObject(t, c, dyn, o)
			}
		}
	}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, name := range []string{"clusteridentities.tally.dev", "clusterstaticentries.tally.dev", "delegationpolicies.tally.dev"} {
		require.Eventually(t, func() bool {
			crd, err := dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, cond := range conds {
				m, _ := cond.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return true
				}
			}
			return false
		}, 30*time.Second, 100*time.Millisecond, "CRD %s not Established", name)
	}
	for _, in := range []*install{kust, chart} {
		for _, o := range in.objects {
			if o.GetKind() != "CustomResourceDefinition" {
				applyObject(t, c, dyn, o)
			}
		}
	}

	t.Run("CRDs", func(t *testing.T) { checkCRDs(t, c, dyn) })
	for name, in := range map[string]*install{"kustomize": kust, "helm": chart} {
		t.Run(name, func(t *testing.T) {
			checkRBAC(t, c, in)
			checkInstall(t, c, in)
		})
	}
}

// installOverlay moves deploy/base to another namespace, the way the
// base's kustomization.yaml tells overlays to: the NamespaceTransformer
// that also moves the bindings' subjects, and the base's Namespace
// deleted. Its arguments: the namespace, the name prefix, the base.
const installOverlay = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namePrefix: %[2]s-
resources:
  - %[3]s
transformers:
  - |-
    apiVersion: builtin
    kind: NamespaceTransformer
    metadata:
      name: namespace
      namespace: %[1]s
    setRoleBindingSubjects: allServiceAccounts
    unsetOnly: false
patches:
  - patch: |-
      $patch: delete
      apiVersion: v1
      kind: Namespace
      metadata:
        name: tally
`

// renderKustomize builds deploy/base through an overlay that moves it to a
// fresh namespace and prefixes its names with it (its ClusterRoles would
// otherwise collide with TestDeployManifests' in the shared cluster).
func renderKustomize(t *testing.T, c *k8s.Cluster, base string) *install {
	t.Helper()
	ns := c.Namespace(t)
	overlay := t.TempDir()
	rel, err := filepath.Rel(overlay, base) // kustomize takes no absolute base
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(fmt.Sprintf(installOverlay, ns, ns, rel)), 0o600))
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), overlay)
	require.NoError(t, err, "kustomize build deploy/base")
	out, err := resMap.AsYaml()
	require.NoError(t, err)
	in := &install{ns: ns, server: ns + "-tally-server", agent: ns + "-tally-agent",
		serverConfigCM: ns + "-tally-server", agentConfigCM: ns + "-tally-agent"}
	in.objects = deploy.DecodeObjects(t, out)
	for _, o := range in.objects {
		switch o.GetKind() {
		case "CustomResourceDefinition":
			require.True(t, strings.HasSuffix(o.GetName(), ".tally.dev"), "namePrefix left %s alone", o.GetName())
		case "ClusterRole", "ClusterRoleBinding":
		default:
			require.Equal(t, ns, o.GetNamespace(), "%s %s", o.GetKind(), o.GetName())
		}
	}
	return in
}

// renderHelm lints the chart and renders it, CRDs included, as a release
// named after a fresh namespace.
func renderHelm(t *testing.T, c *k8s.Cluster, chart string) *install {
	t.Helper()
	bin := deploy.Helm(t)
	run := func(args ...string) []byte {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		require.NoError(t, err, "helm %s: %s\n%s", strings.Join(args, " "), out, stderr.String())
		return out
	}
	lint := run("lint", "--strict", chart)
	require.Contains(t, string(lint), "0 chart(s) failed")

	ns := c.Namespace(t) // tally-xxxxx: contains the chart's name, so objects are <ns>-server, <ns>-agent
	out := run("template", ns, chart, "--namespace", ns, "--include-crds",
		"--set", "trustDomain=install.test", "--set", "clusterName=install-cluster")
	in := &install{ns: ns, server: ns + "-server", agent: ns + "-agent",
		serverConfigCM: ns + "-server", agentConfigCM: ns + "-agent"}
	in.objects = deploy.DecodeObjects(t, out)
	for _, o := range in.objects {
		if o.GetKind() != "CustomResourceDefinition" && o.GetKind() != "ClusterRole" && o.GetKind() != "ClusterRoleBinding" {
			require.Equal(t, ns, o.GetNamespace(), "%s %s", o.GetKind(), o.GetName())
		}
	}
	return in
}

// applyObject server-side applies o (field manager tally-test, strict
// field validation), resolving its resource through discovery.
func applyObject(t *testing.T, c *k8s.Cluster, dyn dynamic.Interface, o *unstructured.Unstructured) {
	t.Helper()
	groups, err := restmapper.GetAPIGroupResources(c.Client.Discovery())
	require.NoError(t, err)
	gvk := o.GroupVersionKind()
	mapping, err := restmapper.NewDiscoveryRESTMapper(groups).RESTMapping(gvk.GroupKind(), gvk.Version)
	require.NoError(t, err, "%s", gvk)
	var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
	if mapping.Scope.Name() == "namespace" {
		require.NotEmpty(t, o.GetNamespace(), "%s %s has no namespace", gvk.Kind, o.GetName())
		ri = dyn.Resource(mapping.Resource).Namespace(o.GetNamespace())
	}
	body, err := json.Marshal(o.Object)
	require.NoError(t, err)
	_, err = ri.Patch(context.Background(), o.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{
		FieldManager: "tally-test", FieldValidation: "Strict", Force: ptr(true),
	})
	require.NoError(t, err, "apply %s %s", gvk.Kind, o.GetName())
}

func ptr[T any](v T) *T { return &v }

// checkCRDs creates valid tally.dev objects and has invalid ones refused
// by the CRDs' schemas.
func checkCRDs(t *testing.T, c *k8s.Cluster, dyn dynamic.Interface) {
	ctx := context.Background()
	suffix := strings.TrimPrefix(c.Namespace(t), "tally-") // unique names for cluster-scoped objects
	gvr := func(res string) dynamic.NamespaceableResourceInterface {
		return dyn.Resource(schema.GroupVersionResource{Group: "tally.dev", Version: "v1alpha1", Resource: res})
	}
	obj := func(kind, name string, spec map[string]any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "tally.dev/v1alpha1", "kind": kind,
			"metadata": map[string]any{"name": name + "-" + suffix}, "spec": spec,
		}}
	}
	tests := []struct {
		name, res string
		obj       *unstructured.Unstructured
		valid     bool
	}{
		{"identity", "clusteridentities", obj("ClusterIdentity", "web", map[string]any{
			"spiffeIDTemplate":  "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
			"podSelector":       map[string]any{"matchLabels": map[string]any{"app": "web"}},
			"namespaceSelector": map[string]any{"matchExpressions": []any{map[string]any{"key": "team", "operator": "In", "values": []any{"a"}}}},
			"dnsNameTemplates":  []any{"{{ .PodMeta.Name }}.svc"}, "x509TTL": "1h", "jwtTTL": "5m", "fallback": true,
			"federatesWith": []any{"other.org"},
		}), true},
		{"identity without template", "clusteridentities", obj("ClusterIdentity", "none", map[string]any{"hint": "x"}), false},
		{"identity with a bad duration", "clusteridentities", obj("ClusterIdentity", "ttl", map[string]any{"spiffeIDTemplate": "spiffe://x/y", "x509TTL": "an hour"}), false},
		{"identity with a bad operator", "clusteridentities", obj("ClusterIdentity", "op", map[string]any{"spiffeIDTemplate": "spiffe://x/y",
			"podSelector": map[string]any{"matchExpressions": []any{map[string]any{"key": "a", "operator": "Like"}}}}), false},
		{"static entry", "clusterstaticentries", obj("ClusterStaticEntry", "vm", map[string]any{
			"spiffeID": "spiffe://example.org/vm/db", "parentID": "spiffe://example.org/agent/k8s_psat/c/n1",
			"selectors": []any{"unix:uid:1000"}, "dnsNames": []any{"db.example.org"}, "x509TTL": "30m", "admin": false,
		}), true},
		{"static entry with a bad selector", "clusterstaticentries", obj("ClusterStaticEntry", "sel", map[string]any{
			"spiffeID": "spiffe://example.org/vm/db", "parentID": "spiffe://example.org/agent", "selectors": []any{"nocolon"},
		}), false},
		{"static entry with a bad ID", "clusterstaticentries", obj("ClusterStaticEntry", "id", map[string]any{
			"spiffeID": "https://example.org/vm/db", "parentID": "spiffe://example.org/agent", "selectors": []any{"unix:uid:0"},
		}), false},
		{"delegation policy", "delegationpolicies", obj("DelegationPolicy", "todos", map[string]any{
			"issuers":  []any{map[string]any{"url": "https://idp.example", "audiences": []any{"todos-web"}}},
			"rules":    []any{map[string]any{"name": "frontend", "actors": []any{"spiffe://example.org/frontend"}, "audiences": []any{"spiffe://example.org/api"}, "scopes": []any{"read"}, "claims": []any{"email"}}},
			"tokenTTL": "5m",
		}), true},
		{"delegation policy with a plain-http issuer", "delegationpolicies", obj("DelegationPolicy", "http", map[string]any{
			"issuers": []any{map[string]any{"url": "http://idp.example", "audiences": []any{"a"}}},
		}), false},
		{"delegation policy rule without actors", "delegationpolicies", obj("DelegationPolicy", "actors", map[string]any{
			"rules": []any{map[string]any{"name": "r", "audiences": []any{"spiffe://example.org/api"}}},
		}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := gvr(tt.res).Create(ctx, tt.obj, metav1.CreateOptions{FieldValidation: "Strict"})
			if tt.valid {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
			}
		})
	}

	// The status subresource takes the standard conditions and the counts.
	name := "web-" + suffix
	got, err := gvr("clusteridentities").Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	got.Object["status"] = map[string]any{
		"podsSelected": int64(3), "namespacesSelected": int64(1), "renderFailures": int64(0), "entriesMasked": int64(0), "entriesFailing": int64(0),
		"conditions": []any{map[string]any{"type": "Ready", "status": "True", "reason": "Rendered", "message": "3 entries", "lastTransitionTime": "2026-01-01T00:00:00Z"}},
	}
	_, err = gvr("clusteridentities").UpdateStatus(ctx, got, metav1.UpdateOptions{FieldValidation: "Strict"})
	require.NoError(t, err)
	got.Object["status"] = map[string]any{"conditions": []any{map[string]any{"type": "Ready", "status": "Maybe", "reason": "X", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}}}
	_, err = gvr("clusteridentities").UpdateStatus(ctx, got, metav1.UpdateOptions{})
	require.Error(t, err, "a condition status other than True, False, Unknown")
}

// checkRBAC asks the apiserver (SubjectAccessReview) what the install's
// service accounts may do.
func checkRBAC(t *testing.T, c *k8s.Cluster, in *install) {
	ctx := context.Background()
	can := func(sa string, attrs authzv1.ResourceAttributes) bool {
		review, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User: "system:serviceaccount:" + in.ns + ":" + sa, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + in.ns},
			ResourceAttributes: &attrs,
		}}, metav1.CreateOptions{})
		require.NoError(t, err)
		return review.Status.Allowed
	}
	tests := []struct {
		sa    string
		attrs authzv1.ResourceAttributes
		want  bool
	}{
		{in.server, authzv1.ResourceAttributes{Group: "authentication.k8s.io", Resource: "tokenreviews", Verb: "create"}, true},
		{in.server, authzv1.ResourceAttributes{Resource: "pods", Verb: "list", Namespace: "any"}, true},
		{in.server, authzv1.ResourceAttributes{Resource: "pods", Verb: "watch"}, true},
		{in.server, authzv1.ResourceAttributes{Resource: "nodes", Verb: "get"}, true},
		{in.server, authzv1.ResourceAttributes{Resource: "namespaces", Verb: "list"}, true},
		{in.server, authzv1.ResourceAttributes{Group: "tally.dev", Resource: "clusteridentities", Verb: "watch"}, true},
		{in.server, authzv1.ResourceAttributes{Group: "tally.dev", Resource: "clusteridentities", Subresource: "status", Verb: "update"}, true},
		{in.server, authzv1.ResourceAttributes{Group: "tally.dev", Resource: "delegationpolicies", Subresource: "status", Verb: "patch"}, true},
		{in.server, authzv1.ResourceAttributes{Group: "coordination.k8s.io", Resource: "leases", Verb: "get", Namespace: in.ns}, true},
		{in.server, authzv1.ResourceAttributes{Resource: "events", Verb: "create", Namespace: in.ns}, true},
		{in.server, authzv1.ResourceAttributes{Resource: "configmaps", Verb: "create", Namespace: in.ns}, true},
		{in.server, authzv1.ResourceAttributes{Resource: "configmaps", Name: "tally-bundle", Verb: "patch", Namespace: in.ns}, true},
		// Not: secrets, writing its own specs, leases elsewhere, pods, other ConfigMaps.
		{in.server, authzv1.ResourceAttributes{Resource: "configmaps", Name: "tally-server", Verb: "patch", Namespace: in.ns}, false},
		{in.server, authzv1.ResourceAttributes{Resource: "configmaps", Name: "tally-bundle", Verb: "patch", Namespace: "kube-system"}, false},
		{in.server, authzv1.ResourceAttributes{Resource: "secrets", Verb: "get", Namespace: in.ns}, false},
		{in.server, authzv1.ResourceAttributes{Resource: "secrets", Verb: "list"}, false},
		{in.server, authzv1.ResourceAttributes{Group: "tally.dev", Resource: "clusteridentities", Verb: "update"}, false},
		{in.server, authzv1.ResourceAttributes{Group: "coordination.k8s.io", Resource: "leases", Verb: "get", Namespace: "kube-system"}, false},
		{in.server, authzv1.ResourceAttributes{Resource: "pods", Verb: "delete", Namespace: "any"}, false},
		{in.agent, authzv1.ResourceAttributes{Resource: "nodes", Subresource: "proxy", Verb: "get"}, true},
		// With the kubelet pod source (both installs' default) no pods through the API server:
		// not its own node's, not another's (RBAC cannot tell them apart).
		{in.agent, authzv1.ResourceAttributes{Resource: "pods", Verb: "watch"}, false},
		{in.agent, authzv1.ResourceAttributes{Resource: "pods", Verb: "list", Namespace: "any"}, false},
		{in.agent, authzv1.ResourceAttributes{Group: "authentication.k8s.io", Resource: "tokenreviews", Verb: "create"}, false},
		{in.agent, authzv1.ResourceAttributes{Resource: "secrets", Verb: "get", Namespace: in.ns}, false},
		{in.agent, authzv1.ResourceAttributes{Resource: "nodes", Verb: "list"}, false},
		{in.agent, authzv1.ResourceAttributes{Group: "tally.dev", Resource: "clusteridentities", Verb: "list"}, false},
	}
	for _, tt := range tests {
		a := tt.attrs
		require.Equal(t, tt.want, can(tt.sa, a), "%s %s %s/%s %s in %q", tt.sa, a.Verb, a.Group, a.Resource, a.Subresource, a.Namespace)
	}
}

// checkInstall reads back what was applied: the configs load and
// validate, the agent's token has the server's audience, the server runs
// as non-root and the agent as root without capabilities, both with
// read-only root filesystems.
func checkInstall(t *testing.T, c *k8s.Cluster, in *install) {
	ctx := context.Background()
	cm := func(name, key string) string {
		got, err := c.Client.CoreV1().ConfigMaps(in.ns).Get(ctx, name, metav1.GetOptions{})
		require.NoError(t, err)
		p := filepath.Join(t.TempDir(), key)
		require.NoError(t, os.WriteFile(p, []byte(got.Data[key]), 0o600))
		return p
	}
	srv := serverapp.DefaultConfig()
	require.NoError(t, config.LoadYAML(cm(in.serverConfigCM, "tally-server.yaml"), &srv))
	require.NoError(t, srv.Validate())
	ag := agentapp.DefaultConfig()
	require.NoError(t, config.LoadYAML(cm(in.agentConfigCM, "tally-agent.yaml"), &ag))
	require.NoError(t, ag.Validate())

	sts, err := c.Client.AppsV1().StatefulSets(in.ns).Get(ctx, in.server, metav1.GetOptions{})
	require.NoError(t, err)
	require.Len(t, sts.Spec.VolumeClaimTemplates, 1)
	require.Equal(t, "data", sts.Spec.VolumeClaimTemplates[0].Name)
	ds, err := c.Client.AppsV1().DaemonSets(in.ns).Get(ctx, in.agent, metav1.GetOptions{})
	require.NoError(t, err)
	var audience string
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					audience = s.ServiceAccountToken.Audience
				}
			}
		}
	}
	require.Equal(t, srv.PSATAudience, audience)
	require.Len(t, ds.Spec.Template.Spec.Tolerations, 1)
	require.Equal(t, "Exists", string(ds.Spec.Template.Spec.Tolerations[0].Operator))
	require.Empty(t, ds.Spec.Template.Spec.Tolerations[0].Key, "tolerates every taint")
	require.Equal(t, "spec.nodeName", ds.Spec.Template.Spec.Containers[0].Env[0].ValueFrom.FieldRef.FieldPath)

	for _, pod := range []struct {
		name string
		spec appsv1.StatefulSetSpec
	}{{"server", sts.Spec}, {"agent", appsv1.StatefulSetSpec{Template: ds.Spec.Template}}} {
		ps := pod.spec.Template.Spec
		if pod.name == "server" {
			require.True(t, *ps.SecurityContext.RunAsNonRoot, pod.name)
			require.Equal(t, int64(65532), *ps.SecurityContext.RunAsUser, pod.name)
		} else {
			// root without capabilities: it writes the root-owned hostPath
			// directories the kubelet creates (test/realnode runs it so)
			require.Equal(t, int64(0), *ps.SecurityContext.RunAsUser, pod.name)
		}
		for _, ctr := range ps.Containers {
			require.True(t, *ctr.SecurityContext.ReadOnlyRootFilesystem, pod.name)
			require.False(t, *ctr.SecurityContext.AllowPrivilegeEscalation, pod.name)
			require.Equal(t, []corev1.Capability{"ALL"}, ctr.SecurityContext.Capabilities.Drop, pod.name)
			require.Empty(t, ctr.SecurityContext.Capabilities.Add, pod.name)
			require.NotNil(t, ctr.ReadinessProbe, pod.name)
			require.NotNil(t, ctr.LivenessProbe, pod.name)
			require.False(t, ctr.Resources.Requests.Cpu().IsZero(), pod.name)
			require.False(t, ctr.Resources.Requests.Memory().IsZero(), pod.name)
		}
	}
	_, err = c.Client.PolicyV1().PodDisruptionBudgets(in.ns).Get(ctx, in.server, metav1.GetOptions{})
	require.NoError(t, err)
}
