package serverapp

import (
	"crypto"
	"encoding/json"
	"log/slog"
	"net/http"
	"sort"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/tallyid/tally/internal/logkey"
)

// bundleSource returns the current trust bundle.
type bundleSource interface {
	Bundle() *spiffebundle.Bundle
}

// publicHandler serves the SPIFFE bundle endpoint at / (https_spiffe: the
// server authenticates with its SVID, callers need no client certificate)
// and OIDC discovery for JWT-SVID consumers.
func publicHandler(src bundleSource, issuer string, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		raw, err := src.Bundle().Marshal()
		if err != nil {
			log.Error("marshal bundle", logkey.Error, err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(raw)
	})
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{
			"issuer":                                issuer,
			"jwks_uri":                              issuer + "/keys",
			"authorization_endpoint":                "",
			"response_types_supported":              []string{"id_token"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{"ES256", "ES384", "RS256", "PS256"},
		})
	})
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, jwks(src.Bundle().JWTAuthorities()))
	})
	return mux
}

// jwks renders JWT authorities as a JWK set for OIDC consumers.
func jwks(auth map[string]crypto.PublicKey) jose.JSONWebKeySet {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	for kid, key := range auth {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: key, KeyID: kid, Use: "sig", Algorithm: string(jose.ES256)})
	}
	sort.Slice(set.Keys, func(i, j int) bool { return set.Keys[i].KeyID < set.Keys[j].KeyID })
	return set
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
