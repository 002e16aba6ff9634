package api

import (
	"context"
	"log/slog"

	"github.com/tallyid/tally/internal/logkey"
	"github.com/tallyid/tally/internal/text"
)

func auditLogger(l *slog.Logger) *slog.Logger { return l.With("log", "audit") }

// audit writes one line per issuance or admin change: who, what, result.
// Never pass a secret as target. Caller, target and error may carry what a
// caller sent (an entry ID, a SPIFFE ID that failed to parse): they are
// escaped, so that a line reads as what it is whatever the log handler.
func audit(ctx context.Context, l *slog.Logger, caller, action, target string, err error) {
	if err != nil {
		l.LogAttrs(ctx, slog.LevelInfo, "audit", slog.String("caller", text.Printable(caller)), slog.String("action", action),
			slog.String("target", text.Printable(target)), slog.String("result", "error"), slog.String(logkey.Error, text.Printable(err.Error())))
		return
	}
	l.LogAttrs(ctx, slog.LevelInfo, "audit", slog.String("caller", text.Printable(caller)), slog.String("action", action),
		slog.String("target", text.Printable(target)), slog.String("result", "ok"))
}
