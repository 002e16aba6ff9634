// Package logging builds the slog logger every Tally binary uses.
package logging

import (
	"fmt"
	"io"
	"log/slog"
)

// Check validates the log_level (debug, info, warn, error) and log_format
// (json, text) keys of a config; errors name the key.
func Check(level, format string) error {
	switch level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("config: log_level %q: want debug, info, warn or error", level)
	}
	if format != "json" && format != "text" {
		return fmt.Errorf("config: log_format %q: want json or text", format)
	}
	return nil
}

// New returns a logger writing to w at level in format, as Check allows.
func New(w io.Writer, level, format string) (*slog.Logger, error) {
	if err := Check(level, format); err != nil {
		return nil, err
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("config: log_level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}
