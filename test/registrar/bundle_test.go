package registrar_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/store/badgerstore"
	"github.com/tallyid/tally/kubebundle"
)

// The server publishes its trust bundle in a ConfigMap for agents yet to
// start, and rewrites it when a key joins the bundle.
func TestBundleConfigMap(t *testing.T) {
	e := newEnv(t)
	st, err := badgerstore.Open(badgerstore.Config{Dir: filepath.Join(t.TempDir(), "ca")})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	authority, err := ca.New(t.Context(), ca.Config{TrustDomain: td, KeyDir: t.TempDir(), Journal: st})
	require.NoError(t, err)
	p, err := kubebundle.New(kubebundle.Config{Kube: e.c.Client, Namespace: e.ns, Name: "tally-bundle", Source: authority})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })

	published := func() string {
		cm, err := e.c.Client.CoreV1().ConfigMaps(e.ns).Get(t.Context(), "tally-bundle", metav1.GetOptions{})
		if err != nil {
			return ""
		}
		return cm.Data[kubebundle.Key]
	}
	eventually(t, "the bundle published", func() bool { return published() == string(kubebundle.PEM(authority.Bundle())) })
	assert.Equal(t, 1, strings.Count(published(), "BEGIN CERTIFICATE"))

	_, err = authority.Prepare(t.Context(), ca.KindX509)
	require.NoError(t, err)
	eventually(t, "the prepared key published", func() bool { return strings.Count(published(), "BEGIN CERTIFICATE") == 2 })
	assert.Equal(t, string(kubebundle.PEM(authority.Bundle())), published())
}
