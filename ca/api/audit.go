package api

import (
	"context"
	"log/slog"
)

func auditLogger(l *slog.Logger) *slog.Logger { return l.With("log", "audit") }

// audit writes one line per issuance or admin change: who, what, result.
// Never pass a secret as target.
func audit(ctx context.Context, l *slog.Logger, caller, action, target string, err error) {
	if err != nil {
		l.LogAttrs(ctx, slog.LevelInfo, "audit", slog.String("caller", caller), slog.String("action", action),
			slog.String("target", target), slog.String("result", "error"), slog.String("error", err.Error()))
		return
	}
	l.LogAttrs(ctx, slog.LevelInfo, "audit", slog.String("caller", caller), slog.String("action", action),
		slog.String("target", target), slog.String("result", "ok"))
}
