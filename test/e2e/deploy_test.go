package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	agentapp "github.com/tallyid/tally/internal/app/agent"
	serverapp "github.com/tallyid/tally/internal/app/server"
	"github.com/tallyid/tally/internal/config"
)

// TestDeployManifests applies deploy/kubernetes to a real kube-apiserver
// (schema validation included), checks the RBAC grants what the server
// and agent call, and that the embedded configs load and validate.
func TestDeployManifests(t *testing.T) {
	t.Parallel()
	_, file, _, _ := runtime.Caller(0)
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "deploy", "kubernetes", "tally.yaml"))
	require.NoError(t, err)
	c := cluster.Get(t)
	dyn, err := dynamic.NewForConfig(c.Config)
	require.NoError(t, err)
	resources := map[string]string{
		"Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "ClusterRole": "clusterroles",
		"ClusterRoleBinding": "clusterrolebindings", "ConfigMap": "configmaps", "Service": "services",
		"StatefulSet": "statefulsets", "DaemonSet": "daemonsets",
	}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	ctx := context.Background()
	kinds := map[string]int{}
	for {
		var obj unstructured.Unstructured
		err := dec.Decode(&obj.Object)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		if len(obj.Object) == 0 {
			continue
		}
		gvk := obj.GroupVersionKind()
		res, ok := resources[gvk.Kind]
		require.True(t, ok, "unexpected kind %s", gvk.Kind)
		gvr := schema.GroupVersionResource{Group: gvk.Group, Version: gvk.Version, Resource: res}
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if ns := obj.GetNamespace(); ns != "" {
			ri = dyn.Resource(gvr).Namespace(ns)
		}
		_, err = ri.Create(ctx, &obj, metav1.CreateOptions{FieldValidation: "Strict"})
		require.NoError(t, err, "%s %s", gvk.Kind, obj.GetName())
		kinds[gvk.Kind]++
	}
	require.Equal(t, 1, kinds["StatefulSet"])
	require.Equal(t, 1, kinds["DaemonSet"])

	// RBAC: what the server's and the agent's service accounts call.
	can := func(sa string, attrs authzv1.ResourceAttributes) bool {
		review, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User: "system:serviceaccount:tally:" + sa, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:tally"},
			ResourceAttributes: &attrs,
		}}, metav1.CreateOptions{})
		require.NoError(t, err)
		return review.Status.Allowed
	}
	require.True(t, can("tally-server", authzv1.ResourceAttributes{Group: "authentication.k8s.io", Resource: "tokenreviews", Verb: "create"}))
	require.True(t, can("tally-server", authzv1.ResourceAttributes{Resource: "pods", Verb: "get", Namespace: "any"}))
	require.True(t, can("tally-server", authzv1.ResourceAttributes{Resource: "nodes", Verb: "get"}))
	require.False(t, can("tally-server", authzv1.ResourceAttributes{Resource: "secrets", Verb: "get", Namespace: "any"}))
	require.True(t, can("tally-agent", authzv1.ResourceAttributes{Resource: "nodes", Subresource: "proxy", Verb: "get"}))
	require.True(t, can("tally-agent", authzv1.ResourceAttributes{Resource: "pods", Verb: "watch"}))
	require.False(t, can("tally-agent", authzv1.ResourceAttributes{Group: "authentication.k8s.io", Resource: "tokenreviews", Verb: "create"}))

	// The configs in the ConfigMaps load (unknown keys would be refused)
	// and validate.
	cm := func(name, key string) string {
		got, err := c.Client.CoreV1().ConfigMaps("tally").Get(ctx, name, metav1.GetOptions{})
		require.NoError(t, err)
		p := filepath.Join(t.TempDir(), key)
		require.NoError(t, os.WriteFile(p, []byte(got.Data[key]), 0o600))
		return p
	}
	srv := serverapp.DefaultConfig()
	require.NoError(t, config.LoadYAML(cm("tally-server", "tally-server.yaml"), &srv))
	require.NoError(t, srv.Validate())
	ag := agentapp.DefaultConfig()
	require.NoError(t, config.LoadYAML(cm("tally-agent", "tally-agent.yaml"), &ag))
	require.NoError(t, ag.Validate())

	// The agent's projected token has the audience the server expects.
	ds, err := c.Client.AppsV1().DaemonSets("tally").Get(ctx, "tally-agent", metav1.GetOptions{})
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
}
