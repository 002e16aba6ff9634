package k8spsat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tallyid/tally/attest"
)

// Clusters attests agents of several clusters. Each cluster's tokens carry
// its own service-account issuer (iss), so a token goes to the attestor of
// the cluster whose issuer it names, and only that cluster's API server
// reviews it. Routing reads iss unverified; the review is what verifies,
// so a token naming another cluster's issuer is refused by that cluster.
type Clusters struct {
	byIssuer map[string]*Attestor
	log      *slog.Logger
}

// NewClusters routes by issuer to the attestors; issuers must be distinct.
func NewClusters(byIssuer map[string]*Attestor, log *slog.Logger) (*Clusters, error) {
	if len(byIssuer) == 0 {
		return nil, errors.New("k8spsat: no clusters")
	}
	for iss := range byIssuer {
		if iss == "" {
			return nil, errors.New("k8spsat: a cluster without an issuer cannot be told apart from the others")
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Clusters{byIssuer: byIssuer, log: log}, nil
}

// Attest attests with the attestor of the token's issuer.
func (c *Clusters) Attest(ctx context.Context, data []byte) (attest.NodeResult, error) {
	iss, err := issuer(data)
	if err != nil {
		c.log.Debug("k8s_psat attestation refused", logReason, reasonMalformed, logDetail, err.Error())
		return attest.NodeResult{}, errRefused
	}
	a, ok := c.byIssuer[iss]
	if !ok {
		c.log.Info("k8s_psat attestation refused", logReason, "unknown_issuer", logDetail, fmt.Sprintf("no cluster has issuer %q", short(iss)))
		return attest.NodeResult{}, errRefused
	}
	return a.Attest(ctx, data)
}

// issuer is the unverified iss claim of a token.
func issuer(data []byte) (string, error) {
	if len(data) == 0 || len(data) > MaxTokenSize {
		return "", errors.New("empty or oversized token")
	}
	tok, err := jwt.ParseSigned(string(data), tokenAlgorithms)
	if err != nil {
		return "", errors.New("not a signed JWT: " + jwtError(err, data))
	}
	var pub jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&pub); err != nil {
		return "", errors.New("JWT claims: " + jwtError(err, data))
	}
	return pub.Issuer, nil
}
