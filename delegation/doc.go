// Package delegation is what a service needs to take part in requests made
// on behalf of a user through Tally (docs/delegation.md): verify the
// delegated token it receives — a JWT-SVID that carries the user, or a
// Txn-Token — and exchange it, or a user's own token, for a token for its
// next hop through the Tally agent (RFC 8693 token exchange).
//
// A Verifier checks a token's signature against the trust domain's JWT
// bundle and returns the user, the scopes, the transaction id and the actor
// chain; the chain is only ever returned from a token that verified, since
// its nested act claims carry no signature of their own. Verifier.Middleware
// does this for each HTTP request. A Client asks the agent on the Workload
// API socket for a token for the next hop; a refusal is an *ExchangeError
// with the RFC 6749 error code and the policy rule that refused.
//
// In a service:
//
//	jwts, err := workloadapi.NewJWTSource(ctx) // the trust bundles, kept current
//	v, err := delegation.NewVerifier(jwts, spiffeid.RequireFromString("spiffe://example.org/orders"))
//	client, err := delegation.NewClient("") // the agent at $SPIFFE_ENDPOINT_SOCKET
//
//	mux.Handle("/orders", v.Middleware(delegation.RequireScope("orders.read", http.HandlerFunc(
//		func(w http.ResponseWriter, r *http.Request) {
//			tok, _ := delegation.FromContext(r.Context()) // tok.User, tok.Actors, tok.Txn
//			next, err := client.OnBehalfOf(r.Context(), tok, "spiffe://example.org/billing", "billing.read")
//			...
//			next.SetHeader(req) // Authorization: Bearer <JWT-SVID>, or Txn-Token
//		}))))
//
// See the package example for the whole of it.
package delegation
