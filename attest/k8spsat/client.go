package k8spsat

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
)

// Client is the agent side of k8s_psat attestation: it presents the agent
// pod's projected service-account token, whose audience must be the server's
// Config.Audience.
type Client struct {
	// TokenPath is the file the kubelet writes the projected token to.
	TokenPath string
}

// Type is the attestation type.
func (Client) Type() string { return Type }

// Data returns the token in TokenPath, read afresh on every call because the
// kubelet rotates it. Surrounding whitespace is dropped. A missing, unreadable
// or empty file is an error; the token itself never appears in one. Safe for
// concurrent use.
func (c Client) Data(context.Context) ([]byte, error) {
	if c.TokenPath == "" {
		return nil, errors.New("k8spsat: no token path configured")
	}
	b, err := os.ReadFile(c.TokenPath)
	if err != nil {
		return nil, fmt.Errorf("k8spsat: read service account token: %w", err)
	}
	token := bytes.TrimSpace(b)
	if len(token) == 0 {
		return nil, fmt.Errorf("k8spsat: service account token file %s is empty", c.TokenPath)
	}
	return token, nil
}
