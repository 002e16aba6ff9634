package api

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/internal/peercred"
	"github.com/tallyid/tally/internal/reserved"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// Registry is what the Admin API needs of the registry.
type Registry interface {
	CreateEntries(ctx context.Context, entries []store.Entry) ([]store.Entry, error)
	UpdateEntry(ctx context.Context, e store.Entry, force bool) (store.Entry, error)
	DeleteEntries(ctx context.Context, ids []string, force bool) error
	GetEntry(ctx context.Context, id string) (store.Entry, error)
	ListEntries(ctx context.Context, f store.EntryFilter) ([]store.Entry, error)
	IsAdmin(spiffeID string) bool
}

// AdminStore holds agents and join tokens.
type AdminStore interface {
	Agents
	ListAgents(ctx context.Context) ([]store.Agent, error)
	DeleteAgent(ctx context.Context, id string) error
	// CreateJoinToken stores a token (keyed by its public ID, never the secret).
	CreateJoinToken(ctx context.Context, t store.JoinToken) error
}

// AdminConfig configures the Admin service.
type AdminConfig struct {
	TrustDomain spiffeid.TrustDomain
	Authority   Authority
	Registry    Registry
	Store       AdminStore
	// TokenKey maps a join token to the key it is stored under.
	TokenKey func(token string) string
	// AdminIDs may call the Admin API over mTLS (besides admin entries).
	AdminIDs []string
	// JWTIssuer, if set, is the iss claim of JWT-SVIDs.
	JWTIssuer string
	// DefaultTokenTTL (10m) and MaxTokenTTL (24h) bound join tokens.
	DefaultTokenTTL, MaxTokenTTL time.Duration
	// Rotation serves the authority RPCs; Records the issuance history;
	// DashboardTokens the dashboard tokens. Nil: those RPCs are Unimplemented.
	Rotation        Rotation
	Records         Recorder
	DashboardTokens DashboardTokens
	Metrics         *Metrics
	Clock           clock.PassiveClock
	Logger          *slog.Logger
}

// Admin implements tallyv1.AdminServer.
type Admin struct {
	tallyv1.UnimplementedAdminServer
	cfg   AdminConfig
	audit *slog.Logger
	peers *peerVerifier
}

// NewAdmin returns the Admin service.
func NewAdmin(cfg AdminConfig) *Admin {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.DefaultTokenTTL == 0 {
		cfg.DefaultTokenTTL = 10 * time.Minute
	}
	if cfg.MaxTokenTTL == 0 {
		cfg.MaxTokenTTL = 24 * time.Hour
	}
	if cfg.TokenKey == nil {
		cfg.TokenKey = func(t string) string { return t }
	}
	return &Admin{cfg: cfg, audit: auditLogger(cfg.Logger), peers: newPeerVerifier(cfg.TrustDomain)}
}

// BatchCreateEntries creates all entries or none.
func (a *Admin) BatchCreateEntries(ctx context.Context, req *tallyv1.BatchCreateEntriesRequest) (*tallyv1.BatchCreateEntriesResponse, error) {
	in := make([]store.Entry, 0, len(req.GetEntries()))
	for i, p := range req.GetEntries() {
		if p.GetId() != "" || p.GetRevision() != 0 || p.GetCreatedAt() != 0 {
			return nil, a.fail(ctx, "entry_create", "", fmt.Errorf("entry %d: %w: id, revision and created_at are output only", i, errInvalid))
		}
		e, err := entryFromProto(p)
		if err != nil {
			return nil, a.fail(ctx, "entry_create", "", fmt.Errorf("entry %d: %w", i, err))
		}
		in = append(in, e)
	}
	out, err := a.cfg.Registry.CreateEntries(ctx, in)
	if err != nil {
		return nil, a.fail(ctx, "entry_create", fmt.Sprintf("%d entries", len(in)), err)
	}
	resp := &tallyv1.BatchCreateEntriesResponse{Entries: make([]*tallyv1.Entry, 0, len(out))}
	for i := range out {
		resp.Entries = append(resp.Entries, EntryToProto(&out[i]))
		a.log(ctx, "entry_create", out[i].ID+" "+out[i].SPIFFEID, nil)
	}
	return resp, nil
}

// GetEntry returns one entry.
func (a *Admin) GetEntry(ctx context.Context, req *tallyv1.GetEntryRequest) (*tallyv1.Entry, error) {
	e, err := a.cfg.Registry.GetEntry(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(a.cfg.Logger, "GetEntry", err)
	}
	return EntryToProto(&e), nil
}

const maxPageSize = 10_000

// ListEntries lists entries by filter, page by page.
func (a *Admin) ListEntries(ctx context.Context, req *tallyv1.ListEntriesRequest) (*tallyv1.ListEntriesResponse, error) {
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, toStatus(a.cfg.Logger, "ListEntries", fmt.Errorf("%w: negative page_size", errInvalid))
	case size == 0 || size > maxPageSize:
		size = maxPageSize
	}
	f := store.EntryFilter{
		SPIFFEID:  req.GetBySpiffeId(),
		ParentID:  req.GetByParentId(),
		Selectors: selectorsFromProto(req.GetBySelectors()),
		AfterID:   req.GetPageToken(),
		Limit:     size,
	}
	entries, err := a.cfg.Registry.ListEntries(ctx, f)
	if err != nil {
		return nil, toStatus(a.cfg.Logger, "ListEntries", err)
	}
	resp := &tallyv1.ListEntriesResponse{Entries: make([]*tallyv1.Entry, 0, len(entries))}
	for i := range entries {
		resp.Entries = append(resp.Entries, EntryToProto(&entries[i]))
	}
	if len(entries) == size {
		resp.NextPageToken = entries[len(entries)-1].ID
	}
	return resp, nil
}

// UpdateEntry replaces an entry.
func (a *Admin) UpdateEntry(ctx context.Context, req *tallyv1.UpdateEntryRequest) (*tallyv1.Entry, error) {
	e, err := entryFromProto(req.GetEntry())
	if err == nil {
		e, err = a.cfg.Registry.UpdateEntry(ctx, e, req.GetForce())
	}
	if err != nil {
		return nil, a.fail(ctx, "entry_update", req.GetEntry().GetId(), err)
	}
	a.log(ctx, "entry_update", e.ID+" "+e.SPIFFEID, nil)
	return EntryToProto(&e), nil
}

// BatchDeleteEntries deletes all entries or none.
func (a *Admin) BatchDeleteEntries(ctx context.Context, req *tallyv1.BatchDeleteEntriesRequest) (*tallyv1.BatchDeleteEntriesResponse, error) {
	if err := a.cfg.Registry.DeleteEntries(ctx, req.GetIds(), req.GetForce()); err != nil {
		return nil, a.fail(ctx, "entry_delete", strings.Join(req.GetIds(), ","), err)
	}
	a.log(ctx, "entry_delete", strings.Join(req.GetIds(), ","), nil)
	return &tallyv1.BatchDeleteEntriesResponse{}, nil
}

// CreateJoinToken makes a single-use agent token.
func (a *Admin) CreateJoinToken(ctx context.Context, req *tallyv1.CreateJoinTokenRequest) (*tallyv1.CreateJoinTokenResponse, error) {
	ttl, err := ttlFromSeconds("ttl", req.GetTtlSeconds())
	switch {
	case err != nil:
		return nil, a.fail(ctx, "token_create", "", err)
	case ttl < 0:
		return nil, a.fail(ctx, "token_create", "", fmt.Errorf("%w: ttl: negative", errInvalid))
	case ttl == 0:
		ttl = a.cfg.DefaultTokenTTL
	case ttl > a.cfg.MaxTokenTTL:
		return nil, a.fail(ctx, "token_create", "", fmt.Errorf("%w: ttl: %s exceeds the maximum %s", errInvalid, ttl, a.cfg.MaxTokenTTL))
	}
	if alias := req.GetSpiffeId(); alias != "" {
		// go-spiffe refuses control characters too; this names the one found.
		if err := registry.CheckText("spiffe_id", alias); err != nil {
			return nil, a.fail(ctx, "token_create", "", err)
		}
		if err := a.checkID(alias); err != nil {
			return nil, a.fail(ctx, "token_create", "", fmt.Errorf("%w: spiffe_id: %w", errInvalid, err))
		}
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, a.fail(ctx, "token_create", "", err)
	}
	token := hex.EncodeToString(b[:])
	exp := a.cfg.Clock.Now().Add(ttl).UTC().Truncate(time.Second)
	key := a.cfg.TokenKey(token)
	if err := a.cfg.Store.CreateJoinToken(ctx, store.JoinToken{Token: key, ExpiresAt: exp, Alias: req.GetSpiffeId()}); err != nil {
		return nil, a.fail(ctx, "token_create", "", err)
	}
	a.log(ctx, "token_create", "token "+key+" alias "+req.GetSpiffeId(), nil)
	return &tallyv1.CreateJoinTokenResponse{Token: token, ExpiresAt: exp.Unix(), SpiffeId: req.GetSpiffeId()}, nil
}

func (a *Admin) checkID(s string) error {
	id, err := spiffeid.FromString(s)
	switch {
	case err != nil:
		return err
	case !id.MemberOf(a.cfg.TrustDomain):
		return fmt.Errorf("%q is not in trust domain %q", s, a.cfg.TrustDomain.Name())
	case id.Path() == "":
		return fmt.Errorf("%q needs a path", s)
	case reserved.IsReserved(id):
		return fmt.Errorf("%q: the /tally/ path is reserved", s)
	}
	return nil
}

// ListAgents lists attested agents.
func (a *Admin) ListAgents(ctx context.Context, _ *tallyv1.ListAgentsRequest) (*tallyv1.ListAgentsResponse, error) {
	agents, err := a.cfg.Store.ListAgents(ctx)
	if err != nil {
		return nil, toStatus(a.cfg.Logger, "ListAgents", err)
	}
	resp := &tallyv1.ListAgentsResponse{}
	for i := range agents {
		resp.Agents = append(resp.Agents, agentToProto(&agents[i]))
	}
	return resp, nil
}

// GetAgent returns one agent.
func (a *Admin) GetAgent(ctx context.Context, req *tallyv1.GetAgentRequest) (*tallyv1.Agent, error) {
	ag, err := a.cfg.Store.GetAgent(ctx, req.GetSpiffeId())
	if err != nil {
		return nil, toStatus(a.cfg.Logger, "GetAgent", err)
	}
	return agentToProto(&ag), nil
}

// EvictAgent forgets an agent: its SVID is refused from now on; an agent
// that can re-attest (PSAT) may do so.
func (a *Admin) EvictAgent(ctx context.Context, req *tallyv1.EvictAgentRequest) (*tallyv1.EvictAgentResponse, error) {
	if err := a.cfg.Store.DeleteAgent(ctx, req.GetSpiffeId()); err != nil {
		return nil, a.fail(ctx, "agent_evict", req.GetSpiffeId(), err)
	}
	a.log(ctx, "agent_evict", req.GetSpiffeId(), nil)
	return &tallyv1.EvictAgentResponse{}, nil
}

// BanAgent refuses an agent's SVID and any re-attestation until evicted.
func (a *Admin) BanAgent(ctx context.Context, req *tallyv1.BanAgentRequest) (*tallyv1.Agent, error) {
	ag, err := a.cfg.Store.GetAgent(ctx, req.GetSpiffeId())
	if err == nil {
		ag.Banned = true
		err = a.cfg.Store.PutAgent(ctx, ag)
	}
	if err != nil {
		return nil, a.fail(ctx, "agent_ban", req.GetSpiffeId(), err)
	}
	a.log(ctx, "agent_ban", req.GetSpiffeId(), nil)
	return agentToProto(&ag), nil
}

// GetBundle returns the trust bundle.
func (a *Admin) GetBundle(context.Context, *tallyv1.GetBundleRequest) (*tallyv1.GetBundleResponse, error) {
	b := a.cfg.Authority.Bundle()
	raw, err := b.Marshal()
	if err != nil {
		return nil, toStatus(a.cfg.Logger, "GetBundle", err)
	}
	seq, _ := b.SequenceNumber()
	resp := &tallyv1.GetBundleResponse{SpiffeBundle: raw, Sequence: seq}
	for _, c := range b.X509Authorities() {
		resp.X509Authorities = append(resp.X509Authorities, c.Raw)
	}
	return resp, nil
}

// MintX509SVID signs an X509-SVID for any workload ID of the trust domain.
func (a *Admin) MintX509SVID(ctx context.Context, req *tallyv1.MintX509SVIDRequest) (*tallyv1.MintX509SVIDResponse, error) {
	chain, err := a.mintX509(ctx, req)
	if err != nil {
		return nil, a.fail(ctx, "x509_mint", req.GetSpiffeId(), err)
	}
	a.log(ctx, "x509_mint", req.GetSpiffeId(), nil)
	return &tallyv1.MintX509SVIDResponse{CertChain: derChain(chain)}, nil
}

func (a *Admin) mintX509(ctx context.Context, req *tallyv1.MintX509SVIDRequest) ([]*x509.Certificate, error) {
	if err := a.checkID(req.GetSpiffeId()); err != nil {
		return nil, fmt.Errorf("%w: spiffe_id: %w", errInvalid, err)
	}
	ttl, err := ttlFromSeconds("ttl", req.GetTtlSeconds())
	if err != nil {
		return nil, err
	}
	if ttl < 0 {
		return nil, fmt.Errorf("%w: ttl: negative", errInvalid)
	}
	id := spiffeid.RequireFromString(req.GetSpiffeId())
	csr, err := ca.ValidateCSR(req.GetCsr())
	if err != nil {
		return nil, err
	}
	dns := slices.Clone(req.GetDnsNames())
	if err := ca.CheckCSR(csr, id, dns); err != nil {
		return nil, err
	}
	chain, err := signX509(ctx, a.cfg.Authority, a.cfg.Metrics, ca.X509SVIDParams{
		PublicKey: csr.PublicKey, ID: id, DNSNames: dns, TTL: ttl,
	})
	a.recordX509Mint(ctx, req.GetSpiffeId(), chain, err)
	return chain, err
}

// MintJWTSVID signs a JWT-SVID for any workload ID of the trust domain.
func (a *Admin) MintJWTSVID(ctx context.Context, req *tallyv1.MintJWTSVIDRequest) (*tallyv1.MintJWTSVIDResponse, error) {
	if err := a.checkID(req.GetSpiffeId()); err != nil {
		return nil, a.fail(ctx, "jwt_mint", req.GetSpiffeId(), fmt.Errorf("%w: spiffe_id: %w", errInvalid, err))
	}
	ttl, err := ttlFromSeconds("ttl", req.GetTtlSeconds())
	if err == nil && ttl < 0 {
		err = fmt.Errorf("%w: ttl: negative", errInvalid)
	}
	if err != nil {
		return nil, a.fail(ctx, "jwt_mint", req.GetSpiffeId(), err)
	}
	token, exp, err := signJWT(ctx, a.cfg.Authority, a.cfg.Metrics, a.cfg.JWTIssuer, ca.JWTSVIDParams{
		ID: spiffeid.RequireFromString(req.GetSpiffeId()), Audience: req.GetAudience(), TTL: ttl,
	})
	a.recordJWTMint(ctx, req.GetSpiffeId(), token, exp, err)
	if err != nil {
		return nil, a.fail(ctx, "jwt_mint", req.GetSpiffeId(), err)
	}
	a.log(ctx, "jwt_mint", req.GetSpiffeId(), nil)
	return &tallyv1.MintJWTSVIDResponse{Token: token, ExpiresAt: exp.Unix()}, nil
}

func (a *Admin) fail(ctx context.Context, action, target string, err error) error {
	a.log(ctx, action, target, err)
	return toStatus(a.cfg.Logger, action, err)
}

func (a *Admin) log(ctx context.Context, action, target string, err error) {
	audit(ctx, a.audit, callerOf(ctx), action, target, err)
}

// callerOf names the admin caller for the audit log.
func callerOf(ctx context.Context) string {
	if info, err := peercred.FromContext(ctx); err == nil {
		return "unix " + info.String()
	}
	if id, ok := ctx.Value(adminIDKey{}).(string); ok {
		return id
	}
	return "unknown"
}

type adminIDKey struct{}

// AdminTLSInterceptor guards the Admin service on the TLS listener: the
// caller's X509-SVID must name a configured admin ID or an admin entry.
// Calls to other services pass through.
// IsAdmin reports whether a SPIFFE ID is an admin: listed in AdminIDs, or
// the ID of an admin entry. Every admin check over mTLS asks it.
func (a *Admin) IsAdmin(id string) bool {
	return slices.Contains(a.cfg.AdminIDs, id) || a.cfg.Registry.IsAdmin(id)
}

func (a *Admin) AdminTLSInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !strings.HasPrefix(info.FullMethod, "/"+tallyv1.Admin_ServiceDesc.ServiceName+"/") {
		return handler(ctx, req)
	}
	id, _, err := a.peers.verify(ctx, a.cfg.Authority.Bundle(), a.cfg.Clock.Now())
	if err != nil {
		return nil, a.fail(ctx, "admin_auth", info.FullMethod, err)
	}
	if !a.IsAdmin(id.String()) {
		return nil, a.fail(context.WithValue(ctx, adminIDKey{}, id.String()), "admin_auth", info.FullMethod,
			fmt.Errorf("%w: %s is not an admin", errPermission, id))
	}
	return handler(context.WithValue(ctx, adminIDKey{}, id.String()), req)
}
