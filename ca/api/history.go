package api

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/ca/records"
	"github.com/tallyid/tally/ca/store"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Bounds of ListIssuances.
const (
	defaultIssuances = 100
	maxIssuances     = 10_000
)

// ListIssuances returns the recorded issuances and events of spiffe_id (all
// of them for ""), newest first: limit of them (0: 100; at most 10,000).
// A failed one has a detail that starts with "failed: ". Without Records the
// call is Unimplemented.
func (a *Admin) ListIssuances(_ context.Context, req *tallyv1.ListIssuancesRequest) (*tallyv1.ListIssuancesResponse, error) {
	if a.cfg.Records == nil {
		return nil, status.Error(codes.Unimplemented, "issuance history is not recorded on this server")
	}
	limit := int(req.GetLimit())
	switch {
	case limit < 0:
		return nil, toStatus(a.cfg.Logger, "ListIssuances", fmt.Errorf("%w: negative limit", errInvalid))
	case limit == 0:
		limit = defaultIssuances
	case limit > maxIssuances:
		limit = maxIssuances
	}
	evs := a.cfg.Records.List(req.GetSpiffeId(), limit)
	resp := &tallyv1.ListIssuancesResponse{Issuances: make([]*tallyv1.Issuance, 0, len(evs))}
	for i := range evs {
		resp.Issuances = append(resp.Issuances, issuanceToProto(&evs[i]))
	}
	return resp, nil
}

func issuanceToProto(e *records.Event) *tallyv1.Issuance {
	detail := e.Detail
	if e.Failed {
		detail = "failed: " + detail
	}
	return &tallyv1.Issuance{
		Kind:             string(e.Kind),
		SpiffeId:         e.SPIFFEID,
		Serial:           e.Serial,
		AgentId:          e.AgentID,
		IssuedAtUnixNano: e.At.UnixNano(),
		NotBefore:        unixOrZero(e.NotBefore),
		NotAfter:         unixOrZero(e.NotAfter),
		KeyId:            e.KeyID,
		Renewal:          e.Renewal,
		Detail:           detail,
	}
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// What the Node and Admin APIs record (NodeConfig.Records,
// AdminConfig.Records): every X509-SVID and JWT-SVID signed or refused,
// every attestation. An issuance is a renewal when the Recorder's
// last-issuance index (issuanceIndex, records.Recorder.Last) holds an
// issuance of the same kind, agent, entry and SPIFFE ID since the agent
// last attested; else, and without that index, it is a first issuance. An
// agent's own SVID is a first issuance at attestation and a renewal by
// RenewAgent. Failures carry the error as Detail; no token or key is ever
// recorded.

// issuanceIndex is the optional part of a Recorder that tells renewals.
type issuanceIndex interface {
	Last(id records.Identity) (records.Event, bool)
}

// maxDetail bounds an error kept as an event's Detail.
const maxDetail = 256

// recordX509 records the X509-SVID of entryID the agent asked for: chain,
// or err. id is the entry's SPIFFE ID once known.
func (n *Node) recordX509(agent store.Agent, entryID, id string, chain []*x509.Certificate, err error) {
	if n.cfg.Records == nil {
		return
	}
	e := records.Event{Kind: records.KindX509, SPIFFEID: spiffeIDOrEmpty(id), AgentID: agent.ID, EntryID: entryID, At: n.cfg.Clock.Now()}
	if err != nil || len(chain) == 0 {
		n.cfg.Records.Record(failed(e, err))
		return
	}
	setX509(&e, chain[0])
	e.Renewal = n.isRenewal(agent, e)
	n.cfg.Records.Record(e)
}

// recordJWT records the JWT-SVID of entryID the agent asked for: resp, or
// err.
func (n *Node) recordJWT(agent store.Agent, entryID, id string, resp *tallyv1.NewJWTSVIDResponse, err error) {
	if n.cfg.Records == nil {
		return
	}
	e := records.Event{Kind: records.KindJWT, SPIFFEID: spiffeIDOrEmpty(id), AgentID: agent.ID, EntryID: entryID, At: n.cfg.Clock.Now()}
	if err != nil {
		n.cfg.Records.Record(failed(e, err))
		return
	}
	e.NotBefore, e.NotAfter, e.KeyID = e.At, time.Unix(resp.GetExpiresAt(), 0), jwtKeyID(resp.GetToken())
	e.Renewal = n.isRenewal(agent, e)
	n.cfg.Records.Record(e)
}

// recordAttestation records an AttestAgent call of type typ by agentID
// ("" if not known) and, if it succeeded, the agent's first SVID.
func (n *Node) recordAttestation(typ, agentID string, resp *tallyv1.AttestAgentResponse, err error) {
	if n.cfg.Records == nil {
		return
	}
	now := n.cfg.Clock.Now()
	e := records.Event{Kind: records.KindAttestation, SPIFFEID: agentID, AgentID: agentID, At: now, Detail: typ}
	if err != nil {
		e.Failed, e.Detail = true, typ+": "+errDetail(err)
		n.cfg.Records.Record(e)
		return
	}
	n.cfg.Records.Record(e)
	if leaf := parseLeaf(resp.GetSvidChain()); leaf != nil {
		svid := records.Event{Kind: records.KindX509, SPIFFEID: agentID, AgentID: agentID, At: now}
		setX509(&svid, leaf)
		n.cfg.Records.Record(svid)
	}
}

// recordAgentRenewal records a RenewAgent call: the agent's new SVID, or err.
func (n *Node) recordAgentRenewal(agent store.Agent, resp *tallyv1.RenewAgentResponse, err error) {
	if n.cfg.Records == nil {
		return
	}
	e := records.Event{Kind: records.KindX509, SPIFFEID: agent.ID, AgentID: agent.ID, At: n.cfg.Clock.Now(), Renewal: true}
	leaf := parseLeaf(resp.GetSvidChain())
	if err != nil || leaf == nil {
		n.cfg.Records.Record(failed(e, err))
		return
	}
	setX509(&e, leaf)
	n.cfg.Records.Record(e)
}

func (n *Node) isRenewal(agent store.Agent, e records.Event) bool {
	idx, ok := n.cfg.Records.(issuanceIndex)
	if !ok {
		return false
	}
	last, ok := idx.Last(e.Identity())
	return ok && !last.At.Before(agent.AttestedAt)
}

// recordX509Mint records an Admin API mint of an X509-SVID for spiffeID:
// chain, or err.
func (a *Admin) recordX509Mint(ctx context.Context, spiffeID string, chain []*x509.Certificate, err error) {
	a.recordMint(ctx, records.KindX509, spiffeID, chain, "", time.Time{}, err)
}

// recordJWTMint records an Admin API mint of a JWT-SVID for spiffeID: token,
// or err.
func (a *Admin) recordJWTMint(ctx context.Context, spiffeID, token string, exp time.Time, err error) {
	a.recordMint(ctx, records.KindJWT, spiffeID, nil, token, exp, err)
}

func (a *Admin) recordMint(ctx context.Context, kind records.Kind, spiffeID string, chain []*x509.Certificate, token string, exp time.Time, err error) {
	if a.cfg.Records == nil {
		return
	}
	e := records.Event{Kind: kind, SPIFFEID: spiffeID, At: a.cfg.Clock.Now(), Detail: "minted by " + callerOf(ctx)}
	switch {
	case err != nil:
		e = failed(e, fmt.Errorf("minted by %s: %w", callerOf(ctx), err))
	case kind == records.KindX509 && len(chain) > 0:
		setX509(&e, chain[0])
	case kind == records.KindJWT:
		e.NotBefore, e.NotAfter, e.KeyID = e.At, exp, jwtKeyID(token)
	}
	a.cfg.Records.Record(e)
}

func failed(e records.Event, err error) records.Event {
	e.Failed = true
	if err != nil {
		e.Detail = errDetail(err)
	}
	return e
}

func setX509(e *records.Event, leaf *x509.Certificate) {
	e.Serial = serialString(leaf)
	e.NotBefore, e.NotAfter = leaf.NotBefore, leaf.NotAfter
	e.KeyID = hex.EncodeToString(leaf.AuthorityKeyId) // the signing slot's ID: its CA's subject key ID
}

func parseLeaf(chain [][]byte) *x509.Certificate {
	if len(chain) == 0 {
		return nil
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil
	}
	return leaf
}

// jwtKeyID returns the kid of a token's header, "" if it has none.
func jwtKeyID(token string) string {
	head, _, ok := strings.Cut(token, ".")
	if !ok {
		return ""
	}
	raw, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return ""
	}
	var h struct {
		KeyID string `json:"kid"`
	}
	if json.Unmarshal(raw, &h) != nil {
		return ""
	}
	return h.KeyID
}

// spiffeIDOrEmpty is id if it is a SPIFFE ID, not the entry ID a failed
// lookup returns in its place.
func spiffeIDOrEmpty(id string) string {
	if strings.HasPrefix(id, "spiffe://") {
		return id
	}
	return ""
}

func errDetail(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) > maxDetail {
		s = strings.ToValidUTF8(s[:maxDetail], "")
	}
	return s
}
