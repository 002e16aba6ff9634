package registrar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/tallyid/tally/ca/exchange"
	"github.com/tallyid/tally/internal/logkey"
)

var delegationPolicies = schema.GroupVersionResource{Group: "tally.dev", Version: "v1alpha1", Resource: "delegationpolicies"}

// DelegationPolicySpec is the spec of a DelegationPolicy: a token-exchange
// policy (docs/delegation.md) as a resource.
type DelegationPolicySpec struct {
	Issuers []struct {
		URL       string   `json:"url"`
		Audiences []string `json:"audiences"`
	} `json:"issuers,omitempty"`
	Rules []struct {
		Name      string   `json:"name"`
		Actors    []string `json:"actors"`
		Audiences []string `json:"audiences"`
		Scopes    []string `json:"scopes,omitempty"`
		Claims    []string `json:"claims,omitempty"`
	} `json:"rules,omitempty"`
	TokenTTL string `json:"tokenTTL,omitempty"`
}

// PolicySink puts token-exchange policies in force beside the configured
// one (exchange.Service.SetExtra), returning the error of each refused.
type PolicySink interface {
	SetExtra(extra map[string]exchange.Policy) map[string]error
}

// PolicyConfig configures a PolicyWatcher.
type PolicyConfig struct {
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	Sink    PolicySink
	Logger  *slog.Logger
}

// PolicyWatcher feeds the DelegationPolicy resources to the token
// exchange and reports on each in its status. It runs on every replica
// (each serves exchanges), unlike the registrar's leader-only writes.
type PolicyWatcher struct {
	cfg PolicyConfig
	log *slog.Logger
}

// NewPolicyWatcher returns a PolicyWatcher; start it with Run.
func NewPolicyWatcher(cfg PolicyConfig) (*PolicyWatcher, error) {
	if cfg.Kube == nil || cfg.Dynamic == nil || cfg.Sink == nil {
		return nil, errors.New("registrar: policies: kubernetes clients and a sink are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &PolicyWatcher{cfg: cfg, log: cfg.Logger.With(logkey.Component, "delegation-policies")}, nil
}

// Run applies the resources at every change until ctx ends.
func (w *PolicyWatcher) Run(ctx context.Context) error {
	factory := dynamicinformer.NewDynamicSharedInformerFactory(w.cfg.Dynamic, 0)
	inf := factory.ForResource(delegationPolicies).Informer()
	changed := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: poke, UpdateFunc: func(_, o any) { poke(o) }, DeleteFunc: poke})
	events := newEventRecorder(w.cfg.Kube)
	defer events.shutdown()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil
	}
	var last sync.Map // name → error text last reported, for one Event per change
	for {
		w.apply(ctx, inf, events, &last)
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func (w *PolicyWatcher) apply(ctx context.Context, inf cache.SharedIndexInformer, events *eventRecorder, last *sync.Map) {
	objs := map[string]*unstructured.Unstructured{}
	extra := map[string]exchange.Policy{}
	invalid := map[string]error{}
	for _, obj := range inf.GetStore().List() {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		objs[u.GetName()] = u
		p, err := toExchangePolicy(u)
		if err != nil {
			invalid[u.GetName()] = err
			continue
		}
		extra[u.GetName()] = p
	}
	for name, err := range w.cfg.Sink.SetExtra(extra) {
		invalid[name] = err
	}
	names := make([]string, 0, len(objs))
	for name := range objs {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		u, err := objs[name], invalid[name]
		msg := errText(err)
		if prev, ok := last.Load(name); (!ok || prev != msg) && err != nil {
			events.warn(u, "InvalidPolicy", "%s", err)
			w.log.Warn("delegation policy refused", logkey.ID, name, logkey.Error, err)
		}
		last.Store(name, msg)
		w.writeStatus(ctx, u, err)
	}
}

// writeStatus sets the Ready condition when it differs from u's.
func (w *PolicyWatcher) writeStatus(ctx context.Context, u *unstructured.Unstructured, err error) {
	gen := u.GetGeneration()
	ready := metav1.Condition{Type: condReady, Status: metav1.ConditionTrue, Reason: "Applied", ObservedGeneration: gen,
		Message: "in force, its rules after the server's configured rules"}
	if err != nil {
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, "InvalidPolicy", err.Error()
	}
	conds := conditionsOf(u)
	if c := meta.FindStatusCondition(conds, condReady); c != nil && c.Status == ready.Status && c.Reason == ready.Reason &&
		c.Message == ready.Message && c.ObservedGeneration == gen {
		return // unchanged: writing it would only wake this watcher again
	}
	meta.SetStatusCondition(&conds, ready)
	obj := statusObject("DelegationPolicy", u.GetName(), map[string]any{"conditions": conditionsJSON(conds), "observedGeneration": gen})
	if _, err := w.cfg.Dynamic.Resource(delegationPolicies).ApplyStatus(ctx, u.GetName(), obj, metav1.ApplyOptions{FieldManager: fieldManager, Force: true}); err != nil && ctx.Err() == nil {
		w.log.Warn("status not written", logkey.ID, u.GetName(), logkey.Error, err)
	}
}

func toExchangePolicy(u *unstructured.Unstructured) (exchange.Policy, error) {
	var spec DelegationPolicySpec
	if err := decodeSpec(u, &spec); err != nil {
		return exchange.Policy{}, err
	}
	var p exchange.Policy
	for _, is := range spec.Issuers {
		p.Issuers = append(p.Issuers, exchange.Issuer{URL: is.URL, Audiences: is.Audiences})
	}
	for _, r := range spec.Rules {
		p.Rules = append(p.Rules, exchange.Rule{Name: r.Name, Actors: r.Actors, Audiences: r.Audiences, Scopes: r.Scopes, Claims: r.Claims})
	}
	var err error
	if p.TokenTTL, err = ttl("tokenTTL", spec.TokenTTL); err != nil {
		return exchange.Policy{}, fmt.Errorf("spec: %w", err)
	}
	return p, nil
}
