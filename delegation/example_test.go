package delegation_test

import (
	"context"
	"errors"
	"log"
	"net/http"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/tallyid/tally/delegation"
)

// A service, orders, that a gateway calls on behalf of a user and that
// calls billing in turn.
func Example() {
	ctx := context.Background()
	jwts, err := workloadapi.NewJWTSource(ctx) // $SPIFFE_ENDPOINT_SOCKET
	if err != nil {
		log.Fatal(err)
	}
	defer jwts.Close()
	v, err := delegation.NewVerifier(jwts, spiffeid.RequireFromString("spiffe://example.org/orders"))
	if err != nil {
		log.Fatal(err)
	}
	client, err := delegation.NewClient("") // $SPIFFE_ENDPOINT_SOCKET
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	orders := func(w http.ResponseWriter, r *http.Request) {
		tok, _ := delegation.FromContext(r.Context())
		log.Printf("user %s via %v, txn %s", tok.User.Subject, tok.Actors, tok.Txn)

		next, err := client.OnBehalfOf(r.Context(), tok, "spiffe://example.org/billing", "billing.read")
		if err != nil {
			var refused *delegation.ExchangeError
			if errors.As(err, &refused) { // e.g. invalid_scope, and the rule
				http.Error(w, "forbidden: "+refused.Code, http.StatusForbidden)
				return
			}
			http.Error(w, "billing unavailable", http.StatusBadGateway)
			return
		}
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "https://billing.internal/invoices", nil)
		if err != nil {
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		next.SetHeader(req)
		// ... send req with an mTLS client of the X509-SVID, and answer.
	}

	mux := http.NewServeMux()
	mux.Handle("/orders", v.Middleware(delegation.RequireScope("orders.read", http.HandlerFunc(orders))))
	log.Fatal(http.ListenAndServe(":8443", mux))
}
