package harness

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/stretchr/testify/require"
)

// HTTPSClient trusts a server authenticating as id with an SVID of bundle.
func HTTPSClient(t testing.TB, bundle x509bundle.Source, id spiffeid.ID) *http.Client {
	t.Helper()
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(id))}}
}

// GetJSON GETs url and decodes a 200 JSON answer into v.
func GetJSON(t testing.TB, c *http.Client, url string, v any) {
	t.Helper()
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
}
