// Package kubebundle publishes the server's trust bundle in a Kubernetes
// ConfigMap, as PEM, and keeps it current: agents mount it as the bundle
// they trust on their first connection, so an install needs no hand step
// to bootstrap them (SPIRE's k8sbundle notifier does the same). Agents
// that are already attested follow rotations over their Node API stream;
// the ConfigMap is for agents yet to start.
package kubebundle

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/backoff"
	"github.com/tallyid/tally/internal/logkey"
)

// Key is the ConfigMap key of the PEM bundle (the agent's trust_bundle
// file, where the ConfigMap is mounted).
const Key = "bundle.pem"

// fieldManager owns the ConfigMap's data (server-side apply).
const fieldManager = "tally-server"

// Source is what the publisher needs of the authority.
type Source interface {
	// SubscribeBundle sends the current bundle at once, then each new one.
	SubscribeBundle() (<-chan *spiffebundle.Bundle, func())
}

// Config configures a Publisher.
type Config struct {
	Kube            kubernetes.Interface
	Namespace, Name string
	Source          Source
	Clock           clock.Clock
	Logger          *slog.Logger
}

// Publisher writes the bundle to the ConfigMap at every change.
type Publisher struct {
	cfg Config
	log *slog.Logger
}

// New returns a Publisher; start it with Run.
func New(cfg Config) (*Publisher, error) {
	if cfg.Kube == nil || cfg.Source == nil || cfg.Namespace == "" || cfg.Name == "" {
		return nil, errors.New("kubebundle: client, source, namespace and name are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Publisher{cfg: cfg, log: cfg.Logger.With(logkey.Component, "bundle-configmap")}, nil
}

// Run publishes until ctx ends; a failed write (the API server away, RBAC
// missing) is logged and retried with backoff, and never stops the server.
func (p *Publisher) Run(ctx context.Context) error {
	bundles, stop := p.cfg.Source.SubscribeBundle()
	defer stop()
	retry := backoff.New(time.Second, time.Minute)
	var want, written []byte
	var wait <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case b := <-bundles:
			want = PEM(b)
		case <-wait:
		}
		wait = nil
		if bytes.Equal(want, written) {
			continue // the same authorities again (a key activated): nothing to write
		}
		if err := p.write(ctx, want); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			d := retry.Next()
			p.log.Warn("trust bundle not published; retrying", logkey.RetryIn, d, logkey.Error, err)
			wait = p.cfg.Clock.After(d)
			continue
		}
		retry.Reset()
		written = want
		p.log.Info("trust bundle published", logkey.ConfigMap, p.cfg.Namespace+"/"+p.cfg.Name)
	}
}

func (p *Publisher) write(ctx context.Context, data []byte) error {
	cm := corev1ac.ConfigMap(p.cfg.Name, p.cfg.Namespace).
		WithLabels(map[string]string{"app.kubernetes.io/part-of": "tally", "app.kubernetes.io/managed-by": "tally-server"}).
		WithData(map[string]string{Key: string(data)})
	_, err := p.cfg.Kube.CoreV1().ConfigMaps(p.cfg.Namespace).Apply(ctx, cm, metav1.ApplyOptions{FieldManager: fieldManager, Force: true})
	return err
}

// PEM is b's X.509 authorities as PEM CERTIFICATE blocks.
func PEM(b *spiffebundle.Bundle) []byte {
	var out []byte
	for _, c := range b.X509Authorities() {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}
