package k8s

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"github.com/tallyid/tally/internal/logkey"
)

// maxPodListBytes bounds a kubelet's answer: 110 pods with large statuses
// are a few MiB.
const maxPodListBytes = 64 << 20

// kubeletSource reads GET /pods of the node's kubelet over verified TLS and
// keeps the answer for kubeletCacheTTL. Concurrent lookups share one request.
type kubeletSource struct {
	url       string
	caFile    string
	tokenPath string
	transport *http.Transport
	client    *http.Client
	clock     clock.PassiveClock
	log       *slog.Logger

	mu       sync.Mutex
	cur      *podIndex  // newest list, nil before the first
	inflight *fetchCall // the newest request under way, nil if none
	gen      uint64     // generation of the last request started
}

// podIndex is one pod list, indexed.
type podIndex struct {
	gen         uint64 // order in which its request started, from 1
	at          time.Time
	byContainer map[string][]*corev1.Pod
	byUID       map[string]*corev1.Pod
}

type fetchCall struct {
	gen  uint64
	done chan struct{}
	// Set before done is closed:
	idx *podIndex
	err error
	// abandoned: the ctx of the caller that made the request ended.
	abandoned bool
}

func newKubeletSource(cfg Config) (*kubeletSource, error) {
	if cfg.KubeletURL == "" {
		cfg.KubeletURL = DefaultKubeletURL
	}
	if cfg.KubeletCAFile == "" {
		cfg.KubeletCAFile = DefaultCAFile
	}
	if cfg.TokenPath == "" {
		cfg.TokenPath = DefaultTokenPath
	}
	u, err := url.Parse(cfg.KubeletURL)
	if err != nil {
		return nil, fmt.Errorf("k8s: KubeletURL: %w", err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("k8s: KubeletURL %q: want https://<host>[:<port>]", cfg.KubeletURL)
	}
	pem, err := os.ReadFile(cfg.KubeletCAFile)
	if err != nil {
		return nil, fmt.Errorf("k8s: KubeletCAFile: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("k8s: KubeletCAFile %s: no PEM certificate", cfg.KubeletCAFile)
	}
	tr := &http.Transport{
		// The kubelet is on this node: never through a proxy.
		Proxy: nil,
		TLSClientConfig: &tls.Config{
			RootCAs:    roots,
			ServerName: cfg.KubeletServerName,
			MinVersion: tls.VersionTLS12,
		},
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
	}
	return &kubeletSource{
		url:       u.JoinPath("pods").String(),
		caFile:    cfg.KubeletCAFile,
		tokenPath: cfg.TokenPath,
		transport: tr,
		client:    &http.Client{Transport: tr, Timeout: 30 * time.Second},
		clock:     cfg.Clock,
		log:       cfg.Logger,
	}, nil
}

// run has nothing to keep up: it waits for ctx and drops idle connections.
func (k *kubeletSource) run(ctx context.Context) error {
	<-ctx.Done()
	k.transport.CloseIdleConnections()
	return nil
}

func (k *kubeletSource) find(ctx context.Context, podUID, containerID string, seen uint64) (found, error) {
	idx, err := k.index(ctx, seen)
	if err != nil {
		return found{}, err
	}
	return found{pods: idx.byContainer[containerID], byUID: idx.byUID[podUID], gen: idx.gen}, nil
}

// index returns a pod list newer than generation seen and younger than
// kubeletCacheTTL: the cached one, the one being fetched, or a new one. A
// caller that shares another's request and sees it fail only because that
// caller's ctx ended tries again.
func (k *kubeletSource) index(ctx context.Context, seen uint64) (*podIndex, error) {
	for {
		k.mu.Lock()
		if c := k.cur; c != nil && c.gen > seen && k.clock.Since(c.at) < kubeletCacheTTL {
			k.mu.Unlock()
			return c, nil
		}
		if call := k.inflight; call != nil && call.gen > seen {
			k.mu.Unlock()
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-call.done:
			}
			if call.abandoned && ctx.Err() == nil {
				continue
			}
			return call.idx, call.err
		}
		k.gen++
		call := &fetchCall{gen: k.gen, done: make(chan struct{})}
		k.inflight = call
		start := k.clock.Now()
		k.mu.Unlock()

		call.idx, call.err = k.fetch(ctx, call.gen, start)
		call.abandoned = call.err != nil && ctx.Err() != nil

		k.mu.Lock()
		if k.inflight == call {
			k.inflight = nil
		}
		if call.err == nil && (k.cur == nil || call.gen > k.cur.gen) {
			k.cur = call.idx
		}
		k.mu.Unlock()
		close(call.done)
		return call.idx, call.err
	}
}

// fetch makes one GET /pods with the current token and indexes the answer.
func (k *kubeletSource) fetch(ctx context.Context, gen uint64, start time.Time) (*podIndex, error) {
	token, err := os.ReadFile(k.tokenPath)
	if err != nil {
		return nil, fmt.Errorf("k8s: kubelet token: %w", err)
	}
	token = bytes.TrimSpace(token)
	if len(token) == 0 {
		return nil, fmt.Errorf("k8s: kubelet token file %s is empty", k.tokenPath)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, fmt.Errorf("k8s: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+string(token))
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		var verr *tls.CertificateVerificationError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("k8s: kubelet %s: serving certificate not trusted (it must chain to %s, the kubelet CA file, and name the kubelet server name): %w", k.url, k.caFile, err)
		}
		return nil, fmt.Errorf("k8s: kubelet: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("k8s: kubelet %s: %s: %s", k.url, resp.Status, bytes.TrimSpace(msg))
	}
	var list corev1.PodList
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxPodListBytes))
	if err := dec.Decode(&list); err != nil {
		return nil, fmt.Errorf("k8s: kubelet %s: pod list: %w", k.url, err)
	}
	k.log.Debug("kubelet pod list", logkey.URL, k.url, logkey.Pods, len(list.Items))
	return newPodIndex(list.Items, gen, start), nil
}

func newPodIndex(pods []corev1.Pod, gen uint64, at time.Time) *podIndex {
	idx := &podIndex{
		gen:         gen,
		at:          at,
		byContainer: make(map[string][]*corev1.Pod, 2*len(pods)),
		byUID:       make(map[string]*corev1.Pod, len(pods)),
	}
	for i := range pods {
		p := &pods[i]
		for _, uid := range podUIDs(p) {
			idx.byUID[uid] = p
		}
		containerIDs(p, func(id string) {
			// A second pod with the container is what find reports as
			// ambiguous; the same pod twice is not.
			if l := idx.byContainer[id]; len(l) > 0 && l[len(l)-1] == p {
				return
			}
			idx.byContainer[id] = append(idx.byContainer[id], p)
		})
	}
	return idx
}
