// Package exchange is Tally's token service: RFC 8693 token exchange that
// turns a user's token from a configured OIDC issuer (or a Tally token issued
// to the caller, for the next hop) into a Txn-Token
// (draft-ietf-oauth-transaction-tokens-10) or a JWT-SVID that carries the
// user, under the policy of the server's config. Claim names are documented
// in docs/delegation.md.
//
// The caller is a workload authenticated by its SVID (mTLS, a JWT-SVID
// client assertion, or an agent that attested it); it is the actor of the
// issued token. Refusals are *Error values with RFC 6749 codes; the HTTP
// endpoint (Handler) and the Node API map them to their protocols.
package exchange
