package workloadapi

import (
	"crypto/x509"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"

	"github.com/tallyid/tally/internal/logkey"
)

// FetchX509SVID streams the caller's X509-SVIDs: a first message as soon as
// the Source has them, then one on every change, each with the full state
// (every SVID, with the trust domain's X.509 authorities as its bundle; hints
// unique). The stream ends with PermissionDenied when the caller has no
// identity (then or after a change) or its process is gone, with Unavailable
// when the server stops, and when the caller cancels.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	ctx := stream.Context()
	log := s.log.With(logkey.Method, "FetchX509SVID")
	if err := checkHeader(ctx); err != nil {
		return toStatus(log, err)
	}
	defer s.cfg.Metrics.streamOpened()()
	c, log, err := s.attest(ctx, log)
	if err != nil {
		return toStatus(log, err)
	}
	sub, err := s.cfg.Source.SubscribeX509(ctx, c.selectors)
	if err != nil {
		return toStatus(log, fmt.Errorf("%w: %w", errSource, err))
	}
	defer sub.Close()
	for {
		select {
		case <-ctx.Done():
			return toStatus(log, ctx.Err())
		case <-s.stopping:
			return toStatus(log, errShuttingDown)
		case u, ok := <-sub.Updates():
			if !ok {
				return toStatus(log, fmt.Errorf("%w: subscription ended", errSource))
			}
			// Identities go only to the process that connected.
			if err := c.pin.Alive(); err != nil {
				return toStatus(log, err)
			}
			resp, err := x509SVIDResponse(log, u)
			if err != nil {
				return toStatus(log, err)
			}
			if resp == nil {
				continue
			}
			if err := stream.Send(resp); err != nil {
				return toStatus(log, err)
			}
			s.cfg.Metrics.svidsServed(svidX509, len(resp.Svids))
		}
	}
}

// x509SVIDResponse renders u, or returns errNoIdentity if it has no SVIDs,
// or nil if it has no bundle (a Source bug: the update is not sent). Of SVIDs
// with the same non-empty hint only the first is kept.
func x509SVIDResponse(log *slog.Logger, u X509Update) (*workload.X509SVIDResponse, error) {
	if len(u.SVIDs) == 0 {
		return nil, errNoIdentity
	}
	if u.Bundle == nil {
		log.Error("identity update without a trust bundle; not sent")
		return nil, nil
	}
	bundle := concatDER(u.Bundle.X509Authorities())
	resp := &workload.X509SVIDResponse{Svids: make([]*workload.X509SVID, 0, len(u.SVIDs))}
	hints := make(map[string]struct{})
	for _, svid := range u.SVIDs {
		if svid.Hint != "" {
			if _, dup := hints[svid.Hint]; dup {
				log.Debug("dropping an SVID whose hint is already used", logkey.SPIFFEID, svid.ID.String(), logkey.Hint, svid.Hint)
				continue
			}
			hints[svid.Hint] = struct{}{}
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    svid.ID.String(),
			X509Svid:    svid.CertChain,
			X509SvidKey: svid.Key,
			Bundle:      bundle,
			Hint:        svid.Hint,
		})
	}
	return resp, nil
}

// FetchX509Bundles streams the trust domain's X.509 authorities (concatenated
// DER, keyed by trust domain ID) to any attested caller, identity or not: the
// current bundle at once, then every change.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	return streamBundles(s, stream, "FetchX509Bundles", func(b *spiffebundle.Bundle) (*workload.X509BundlesResponse, error) {
		return &workload.X509BundlesResponse{
			Bundles: map[string][]byte{b.TrustDomain().IDString(): concatDER(b.X509Authorities())},
		}, nil
	})
}

// streamBundles is FetchX509Bundles and FetchJWTBundles: it attests the
// caller, then sends render(bundle) for every bundle of the Source.
func streamBundles[T any](s *Server, stream grpc.ServerStreamingServer[T], method string, render func(*spiffebundle.Bundle) (*T, error)) error {
	ctx := stream.Context()
	log := s.log.With(logkey.Method, method)
	if err := checkHeader(ctx); err != nil {
		return toStatus(log, err)
	}
	defer s.cfg.Metrics.streamOpened()()
	_, log, err := s.attest(ctx, log)
	if err != nil {
		return toStatus(log, err)
	}
	updates, cancel := s.cfg.Source.SubscribeBundle()
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return toStatus(log, ctx.Err())
		case <-s.stopping:
			return toStatus(log, errShuttingDown)
		case b, ok := <-updates:
			if !ok {
				return toStatus(log, fmt.Errorf("%w: bundle subscription ended", errSource))
			}
			if b == nil {
				continue
			}
			resp, err := render(b)
			if err != nil {
				return toStatus(log, err)
			}
			if err := stream.Send(resp); err != nil {
				return toStatus(log, err)
			}
		}
	}
}

func concatDER(certs []*x509.Certificate) []byte {
	n := 0
	for _, c := range certs {
		n += len(c.Raw)
	}
	out := make([]byte, 0, n)
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}
