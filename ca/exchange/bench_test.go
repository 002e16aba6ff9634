package exchange

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// BenchmarkExchange is the service alone: one RS256 subject token verified,
// one ES256 JWT-SVID signed, the audit line and the metrics.
func BenchmarkExchange(b *testing.B) {
	f := newFixture(b)
	tok := f.idp.sign(b, jose.RS256, "rsa-1", f.idp.userClaims("bob"))
	req := Request{GrantType: GrantType, SubjectToken: tok, SubjectTokenType: TypeIDToken, Audience: []string{todos.String()}}
	c := Caller{ID: shares, Authn: AuthnX509}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.svc.Exchange(context.Background(), c, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkEndpoint adds HTTPS with mTLS on kept-alive connections.
func BenchmarkEndpoint(b *testing.B) {
	f := newFixture(b)
	srv := f.endpoint(b)
	cert := f.svid(b, shares)
	c := f.client(&cert)
	c.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	body := f.form(b).Encode()
	b.SetParallelism(25)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Post(srv.URL+"/oauth2/token", "application/x-www-form-urlencoded", strings.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
