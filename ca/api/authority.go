package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tallyid/tally/ca"
	"github.com/tallyid/tally/internal/logkey"
	tallyv1 "github.com/tallyid/tally/proto/tally/v1"
)

// maxSlotIDLen bounds a slot ID in a request: an X.509 subject key ID is 40
// hex digits, a kid 26 characters.
const maxSlotIDLen = 128

// GetAuthority lists the CA's key slots of the kind asked ("x509" or "jwt"),
// or of both for "", X.509 first, oldest first.
func (a *Admin) GetAuthority(_ context.Context, req *tallyv1.GetAuthorityRequest) (*tallyv1.GetAuthorityResponse, error) {
	if a.cfg.Rotation == nil {
		return nil, errNoRotation
	}
	var kind ca.Kind
	if req.GetKind() != "" {
		k, err := kindFromProto(req.GetKind())
		if err != nil {
			return nil, toStatus(a.cfg.Logger, "GetAuthority", err)
		}
		kind = k
	}
	resp := &tallyv1.GetAuthorityResponse{}
	for _, s := range a.cfg.Rotation.Slots() {
		if kind == "" || s.Kind == kind {
			resp.Slots = append(resp.Slots, slotToProto(s))
		}
	}
	return resp, nil
}

// PrepareAuthority makes a new prepared key of the kind: published in the
// bundle at once, signing nothing until activated. Audited.
func (a *Admin) PrepareAuthority(ctx context.Context, req *tallyv1.AuthorityRequest) (*tallyv1.AuthoritySlot, error) {
	return a.rotate(ctx, "authority_prepare", req, func(k ca.Kind) (ca.SlotInfo, error) {
		if req.GetId() != "" || req.GetForce() {
			return ca.SlotInfo{}, fmt.Errorf("%w: prepare takes no id and no force", errInvalid)
		}
		return a.cfg.Rotation.Prepare(ctx, k)
	})
}

// ActivateAuthority makes the prepared key (id, or "" for the prepared one)
// active and the active one old. Refused for a key published too recently
// for consumers to have fetched it. Audited.
func (a *Admin) ActivateAuthority(ctx context.Context, req *tallyv1.AuthorityRequest) (*tallyv1.AuthoritySlot, error) {
	return a.rotate(ctx, "authority_activate", req, func(k ca.Kind) (ca.SlotInfo, error) {
		if req.GetForce() {
			return ca.SlotInfo{}, fmt.Errorf("%w: activate takes no force", errInvalid)
		}
		return a.cfg.Rotation.Activate(ctx, k, req.GetId())
	})
}

// TaintAuthority marks an old key (id, or "" for the old one) tainted:
// agents re-mint what it signed. Audited.
func (a *Admin) TaintAuthority(ctx context.Context, req *tallyv1.AuthorityRequest) (*tallyv1.AuthoritySlot, error) {
	return a.rotate(ctx, "authority_taint", req, func(k ca.Kind) (ca.SlotInfo, error) {
		if req.GetForce() {
			return ca.SlotInfo{}, fmt.Errorf("%w: taint takes no force", errInvalid)
		}
		return a.cfg.Rotation.Taint(ctx, k, req.GetId())
	})
}

// RevokeAuthority removes a prepared or old key from the bundle; an old one
// only once what it signed expired, unless force. Audited.
func (a *Admin) RevokeAuthority(ctx context.Context, req *tallyv1.AuthorityRequest) (*tallyv1.AuthoritySlot, error) {
	return a.rotate(ctx, "authority_revoke", req, func(k ca.Kind) (ca.SlotInfo, error) {
		return a.cfg.Rotation.Revoke(ctx, k, req.GetId(), req.GetForce())
	})
}

var errNoRotation = status.Error(codes.Unimplemented, "rotation by hand is not configured on this server")

// rotate checks req's kind and id, runs step, audits the outcome as action
// and maps it to the response.
func (a *Admin) rotate(ctx context.Context, action string, req *tallyv1.AuthorityRequest, step func(ca.Kind) (ca.SlotInfo, error)) (*tallyv1.AuthoritySlot, error) {
	if a.cfg.Rotation == nil {
		return nil, errNoRotation
	}
	target := req.GetKind() + " " + req.GetId()
	if req.GetForce() {
		target += " force"
	}
	kind, err := kindFromProto(req.GetKind())
	if err == nil && len(req.GetId()) > maxSlotIDLen {
		err = fmt.Errorf("%w: id: longer than %d characters", errInvalid, maxSlotIDLen)
	}
	var info ca.SlotInfo
	if err == nil {
		info, err = step(kind)
	}
	if err != nil {
		a.log(ctx, action, target, err)
		return nil, rotationStatus(a.cfg.Logger, action, err)
	}
	a.log(ctx, action, fmt.Sprintf("%s %s %s", info.Kind, info.ID, info.Status), nil)
	return slotToProto(info), nil
}

// rotationStatus maps the authority's refusals of a rotation step —
// FailedPrecondition for a key not in a state for it, NotFound for an unknown
// key — and everything else as toStatus does.
func rotationStatus(log *slog.Logger, method string, err error) error {
	var code codes.Code
	switch {
	case errors.Is(err, ca.ErrConflict):
		code = codes.FailedPrecondition
	case errors.Is(err, ca.ErrNotFound):
		code = codes.NotFound
	default:
		return toStatus(log, method, err)
	}
	log.Debug("request refused", logkey.Method, method, logkey.Code, code.String(), logkey.Error, err)
	return status.Error(code, err.Error())
}

func kindFromProto(s string) (ca.Kind, error) {
	switch k := ca.Kind(s); k {
	case ca.KindX509, ca.KindJWT:
		return k, nil
	}
	return "", fmt.Errorf("%w: kind %q: want %q or %q", errInvalid, s, ca.KindX509, ca.KindJWT)
}

func slotToProto(s ca.SlotInfo) *tallyv1.AuthoritySlot {
	return &tallyv1.AuthoritySlot{
		Kind:        string(s.Kind),
		Id:          s.ID,
		Status:      string(s.Status),
		NotBefore:   slotUnix(s.NotBefore),
		NotAfter:    slotUnix(s.NotAfter),
		ActivatedAt: slotUnix(s.ActivatedAt),
		Tainted:     s.Tainted,
		TaintedAt:   slotUnix(s.TaintedAt),
	}
}

// slotUnix is t in Unix seconds, 0 for the zero time.
func slotUnix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}
