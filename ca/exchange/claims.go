package exchange

import (
	"encoding/json"
	"fmt"
	"maps"
)

// User is the end user a delegated token speaks for: the issuer and subject
// of the user's token, and the claims policy passes through. It marshals as
// one flat object {"iss", "sub", <claims>…} (the usr claim).
type User struct {
	Issuer  string
	Subject string
	Claims  map[string]any
}

func (u User) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, len(u.Claims)+2)
	maps.Copy(m, u.Claims)
	m["iss"], m["sub"] = u.Issuer, u.Subject
	return json.Marshal(m)
}

func (u *User) UnmarshalJSON(raw []byte) error {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	iss, _ := m["iss"].(string)
	sub, _ := m["sub"].(string)
	if iss == "" || sub == "" {
		return fmt.Errorf("usr: iss and sub required")
	}
	delete(m, "iss")
	delete(m, "sub")
	*u = User{Issuer: iss, Subject: sub, Claims: m}
	return nil
}

// only returns u with the named claims only.
func (u User) only(names []string) User {
	out := User{Issuer: u.Issuer, Subject: u.Subject, Claims: map[string]any{}}
	for _, n := range names {
		if v, ok := u.Claims[n]; ok {
			out.Claims[n] = v
		}
	}
	return out
}

// Actor is an RFC 8693 act claim: the current actor, and in Act the one
// before it.
type Actor struct {
	Sub string `json:"sub"`
	Act *Actor `json:"act,omitempty"`
}

// maxChain bounds the actors of a chain.
const maxChain = 16

// depth is the number of actors in the chain.
func (a *Actor) depth() int {
	n := 0
	for ; a != nil; a = a.Act {
		n++
	}
	return n
}

// tallyClaims is what Tally puts in the tokens it issues (docs/delegation.md).
type tallyClaims struct {
	Issuer   string          `json:"iss"`
	Subject  string          `json:"sub"`
	Audience json.RawMessage `json:"aud"`
	Expiry   *int64          `json:"exp"`
	IssuedAt *int64          `json:"iat"`
	Txn      string          `json:"txn"`
	Scope    string          `json:"scope"`
	User     *User           `json:"usr"` // JWT-SVIDs
	Act      *Actor          `json:"act"`
	ReqWL    string          `json:"req_wl"` // Txn-Tokens
	TCtx     *struct {
		User *User `json:"usr"`
	} `json:"tctx"`
}

// audiences decodes aud, a string or an array of strings.
func (c *tallyClaims) audiences() ([]string, error) {
	var one string
	if err := json.Unmarshal(c.Audience, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(c.Audience, &many); err != nil {
		return nil, fmt.Errorf("aud: want a string or an array of strings")
	}
	return many, nil
}
