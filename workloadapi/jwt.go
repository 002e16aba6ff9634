package workloadapi

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tallyid/tally/internal/logkey"
)

// FetchJWTSVID returns a JWT-SVID for the requested audience for each of the
// caller's identities, or only for spiffe_id if set. No audience or a
// malformed spiffe_id is InvalidArgument; no identity is PermissionDenied;
// a Source refusal wrapping ErrRateLimited (too many fresh audiences) is
// ResourceExhausted.
// Of SVIDs with the same non-empty hint only the first is returned.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	log := s.log.With(logkey.Method, "FetchJWTSVID")
	if err := checkHeader(ctx); err != nil {
		return nil, toStatus(log, err)
	}
	if len(req.GetAudience()) == 0 {
		return nil, toStatus(log, fmt.Errorf("%w: audience must be specified", errInvalid))
	}
	for _, aud := range req.GetAudience() {
		if aud == "" {
			return nil, toStatus(log, fmt.Errorf("%w: audience must not be empty", errInvalid))
		}
	}
	var id spiffeid.ID
	if req.GetSpiffeId() != "" {
		var err error
		if id, err = spiffeid.FromString(req.GetSpiffeId()); err != nil {
			return nil, toStatus(log, fmt.Errorf("%w: spiffe_id: %w", errInvalid, err))
		}
	}
	c, log, err := s.attest(ctx, log)
	if err != nil {
		return nil, toStatus(log, err)
	}
	svids, err := s.cfg.Source.FetchJWTSVIDs(ctx, c.selectors, id, req.GetAudience())
	if err != nil {
		return nil, toStatus(log, fmt.Errorf("%w: %w", errSource, err))
	}
	resp := &workload.JWTSVIDResponse{Svids: make([]*workload.JWTSVID, 0, len(svids))}
	hints := make(map[string]struct{})
	for _, svid := range svids {
		if !id.IsZero() && svid.ID != id {
			continue
		}
		if svid.Hint != "" {
			if _, dup := hints[svid.Hint]; dup {
				log.Debug("dropping a JWT-SVID whose hint is already used", logkey.SPIFFEID, svid.ID.String(), logkey.Hint, svid.Hint)
				continue
			}
			hints[svid.Hint] = struct{}{}
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: svid.ID.String(), Svid: svid.Token, Hint: svid.Hint})
	}
	if len(resp.Svids) == 0 {
		return nil, toStatus(log, errNoIdentity)
	}
	// Identities go only to the process that connected.
	if err := c.pin.Alive(); err != nil {
		return nil, toStatus(log, err)
	}
	s.cfg.Metrics.svidsServed(svidJWT, len(resp.Svids))
	return resp, nil
}

// FetchJWTBundles streams the trust domain's JWT authorities as a JWKS
// document (go-spiffe jwtbundle), keyed by trust domain ID, to any attested
// caller: the current bundle at once, then every change.
func (s *Server) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	return streamBundles(s, stream, "FetchJWTBundles", func(b *spiffebundle.Bundle) (*workload.JWTBundlesResponse, error) {
		jwks, err := b.JWTBundle().Marshal()
		if err != nil {
			return nil, fmt.Errorf("workloadapi: jwt bundle: %w", err)
		}
		return &workload.JWTBundlesResponse{Bundles: map[string][]byte{b.TrustDomain().IDString(): jwks}}, nil
	})
}

// ValidateJWTSVID validates a JWT-SVID for audience against the trust
// domain's JWT authorities, for any attested caller. Missing audience or
// svid, and an invalid token, are InvalidArgument (with the reason); a
// missing bundle is Unavailable. It returns the token's SPIFFE ID and claims.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	log := s.log.With(logkey.Method, "ValidateJWTSVID")
	if err := checkHeader(ctx); err != nil {
		return nil, toStatus(log, err)
	}
	if req.GetAudience() == "" {
		return nil, toStatus(log, fmt.Errorf("%w: audience must be specified", errInvalid))
	}
	if req.GetSvid() == "" {
		return nil, toStatus(log, fmt.Errorf("%w: svid must be specified", errInvalid))
	}
	_, log, err := s.attest(ctx, log)
	if err != nil {
		return nil, toStatus(log, err)
	}
	bundle := s.cfg.Source.Bundle()
	if bundle == nil {
		return nil, toStatus(log, errNotReady)
	}
	svid, err := jwtsvid.ParseAndValidate(req.GetSvid(), bundle, []string{req.GetAudience()})
	if err != nil {
		return nil, toStatus(log, fmt.Errorf("%w: %w", errInvalid, err))
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, toStatus(log, fmt.Errorf("workloadapi: claims: %w", err))
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}
