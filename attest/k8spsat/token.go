package k8spsat

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// MaxTokenSize is the largest token the Attestor sends to the apiserver. A
// projected service-account token is about 1 KiB (RS256, pod- and
// node-bound); 16 KiB leaves room for long names and larger keys.
const MaxTokenSize = 16 << 10

// leeway is the clock skew allowed between this server and the apiserver
// when the unverified expiry is checked, the apiserver's own (jwt.DefaultLeeway).
const leeway = jwt.DefaultLeeway

// tokenAlgorithms are the signature algorithms a kube-apiserver (or an
// external signer) signs service-account tokens with. "none" and HMAC are
// not among them.
var tokenAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.EdDSA,
}

// tokenClaims are the claims of a pod-bound service-account token
// (kube-apiserver pkg/serviceaccount/claims.go).
type tokenClaims struct {
	Kubernetes struct {
		Namespace      string    `json:"namespace"`
		ServiceAccount tokenRef  `json:"serviceaccount"`
		Pod            *tokenRef `json:"pod"`
		Node           *tokenRef `json:"node"`
	} `json:"kubernetes.io"`
}

type tokenRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// unverified is what the token claims about itself before anyone checked
// its signature: a filter, never an identity.
type unverified struct {
	namespace, serviceAccount string
	pod                       tokenRef
}

// refusal is why the prefilter refused a token: a stable reason for the log
// and a detail that never contains the token.
type refusal struct {
	reason, detail string
}

// prefilter checks, without the apiserver and without verifying the
// signature, that token looks like a pod-bound service-account token the
// apiserver could authenticate for audience and that its service account
// is allowed: at most MaxTokenSize bytes, a compact JWS with an asymmetric
// algorithm, an issuer, audience among its audiences, an expiry after now
// (less the leeway), no not-before after now (plus the leeway), a subject
// system:serviceaccount:<ns>:<name> matching its kubernetes.io namespace and
// service account, a bound pod with name and uid, and ns:name in allowed.
// It returns nil and the claims if so. TokenReview remains the authority:
// passing here proves nothing.
func prefilter(token []byte, audience string, allowed map[string]bool, now time.Time) (unverified, *refusal) {
	if len(token) > MaxTokenSize {
		return unverified{}, &refusal{reasonMalformed, fmt.Sprintf("token is %d bytes, more than %d", len(token), MaxTokenSize)}
	}
	tok, err := jwt.ParseSigned(string(token), tokenAlgorithms)
	if err != nil {
		return unverified{}, &refusal{reasonMalformed, "not a signed JWT: " + jwtError(err, token)}
	}
	var pub jwt.Claims
	var priv tokenClaims
	if err := tok.UnsafeClaimsWithoutVerification(&pub, &priv); err != nil {
		return unverified{}, &refusal{reasonMalformed, "JWT claims: " + jwtError(err, token)}
	}
	switch {
	case pub.Issuer == "":
		return unverified{}, &refusal{reasonMalformed, "no iss claim"}
	case !slices.Contains([]string(pub.Audience), audience):
		return unverified{}, &refusal{reasonAudience, fmt.Sprintf("token audiences %s do not include %q", short(fmt.Sprintf("%q", []string(pub.Audience))), audience)}
	case pub.Expiry == nil:
		return unverified{}, &refusal{reasonMalformed, "no exp claim (not a bound token)"}
	case now.Add(-leeway).After(pub.Expiry.Time()):
		return unverified{}, &refusal{reasonExpired, "token expired at " + pub.Expiry.Time().UTC().Format(time.RFC3339)}
	case pub.NotBefore != nil && now.Add(leeway).Before(pub.NotBefore.Time()):
		return unverified{}, &refusal{reasonExpired, "token not valid before " + pub.NotBefore.Time().UTC().Format(time.RFC3339)}
	}
	k := priv.Kubernetes
	rest, ok := strings.CutPrefix(pub.Subject, serviceAccountPrefix)
	ns, sa, _ := strings.Cut(rest, ":")
	switch {
	case !ok || ns == "" || sa == "" || strings.Contains(sa, ":"):
		return unverified{}, &refusal{reasonNotServiceAccount, fmt.Sprintf("subject %s is not a service account", short(fmt.Sprintf("%q", pub.Subject)))}
	case k.Namespace != ns || k.ServiceAccount.Name != sa:
		return unverified{}, &refusal{reasonMalformed, "kubernetes.io namespace and service account do not match the subject"}
	case k.Pod == nil || k.Pod.Name == "" || k.Pod.UID == "":
		return unverified{}, &refusal{reasonNotPodBound, "token is not bound to a pod"}
	case !allowed[ns+":"+sa]:
		return unverified{}, &refusal{reasonServiceAccount, "service account " + short(ns+":"+sa) + " is not allowed"}
	}
	return unverified{namespace: ns, serviceAccount: sa, pod: *k.Pod}, nil
}

// jwtError is err's text without token, cut short: go-jose's errors do not
// quote the input, but a log line should stay short whatever a caller sends.
func jwtError(err error, token []byte) string {
	return short(redact(err.Error(), string(token)))
}

// short cuts s, text an unauthenticated caller chose, to a log-sized length.
func short(s string) string {
	const max = 160
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
