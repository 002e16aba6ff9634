package badgerstore

import (
	"fmt"
	"log/slog"
	"strings"
)

// badgerLogger implements badger.Logger: warnings and errors go to slog,
// badger's chatty info and debug lines are dropped.
type badgerLogger struct {
	log *slog.Logger
}

func (l badgerLogger) Errorf(format string, args ...any) {
	l.log.Error(message(format, args), "source", "badger")
}

func (l badgerLogger) Warningf(format string, args ...any) {
	l.log.Warn(message(format, args), "source", "badger")
}

func (badgerLogger) Infof(string, ...any)  {}
func (badgerLogger) Debugf(string, ...any) {}

func message(format string, args []any) string {
	return strings.TrimSpace(fmt.Sprintf(format, args...))
}
