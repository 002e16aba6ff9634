package k8spsat

import (
	"context"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tokens go to the cluster whose issuer they name; a token naming no
// cluster's issuer, or no JWT at all, reaches no API server.
func TestClustersRouteByIssuer(t *testing.T) {
	prod, staging := newFakeCluster(), newFakeCluster()
	cfg := testConfig(prod)
	a, err := New(cfg)
	require.NoError(t, err)
	cfg = testConfig(staging)
	cfg.ClusterName = "staging"
	b, err := New(cfg)
	require.NoError(t, err)
	c, err := NewClusters(map[string]*Attestor{testIssuer: a, "https://staging.example": b}, nil)
	require.NoError(t, err)

	token := mintToken(t, jose.ES256, func(cl *tokenClaimsJSON) { cl.Issuer = "https://staging.example" })
	staging.token = token // the one token staging's API server authenticates
	res, err := c.Attest(context.Background(), []byte(token))
	require.NoError(t, err)
	assert.Equal(t, "spiffe://example.org/tally/agent/k8s_psat/staging/"+testNodeUID, res.AgentID.String())
	assert.NotEmpty(t, staging.gotAudiences, "reviewed by staging")
	assert.Empty(t, prod.gotAudiences, "not by prod")

	for name, token := range map[string]string{
		"unknown issuer": mintToken(t, jose.ES256, func(cl *tokenClaimsJSON) { cl.Issuer = "https://elsewhere.example" }),
		"not a JWT":      "garbage",
	} {
		_, err := c.Attest(context.Background(), []byte(token))
		require.ErrorIs(t, err, errRefused, name)
	}
	assert.Empty(t, prod.gotAudiences, "no review for what no cluster issued")

	_, err = NewClusters(map[string]*Attestor{"": a}, nil)
	require.Error(t, err, "a cluster without an issuer")
}
