// Package app is the todos demo (examples/todos/README.md): three services,
// todos, reminders and shares, and the demo client that plays the story
// through them. Every one of them is a workload that gets its identity from
// Tally through the Workload API; the users, Alice and Bob, sign in at the
// demo's OpenID provider (package examples/todos/idp).
//
//   - Todos keeps the todos. Reminders may ask it, for itself, which todos are
//     due; shares may ask it on behalf of a user, with a delegated JWT-SVID.
//   - Reminders lists the todos due today, for the demo client.
//   - Shares shares a user's todo with another user and lists the todos
//     shared with the user. It exchanges the user's OIDC token at Tally,
//     through its agent, for a token for todos (RFC 8693).
//   - Demo signs Alice and Bob in and prints each request of the story,
//     who makes it, on whose behalf, and the answer.
//
// Each service is an http.Handler served over mTLS (Serve) that authorises
// its callers by SPIFFE ID; it calls other services with a Client that
// authorises the server it calls. Routes under /demo/ exist only to show a
// refusal: a well-behaved service has none of them.
package app
