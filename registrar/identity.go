package registrar

import (
	"errors"
	"fmt"
	"strings"
	"text/template"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/tallyid/tally/attest/k8s"
	"github.com/tallyid/tally/ca/registry"
	"github.com/tallyid/tally/ca/store"
)

// errRender marks a template that failed for one pod (a missing label, an
// ID outside the trust domain): the pod gets no entry from that identity.
var errRender = errors.New("render")

// identity is a ClusterIdentity compiled: its selectors and templates
// parsed once, so that rendering a pod costs only the executions. A spec
// that does not compile has err set and renders nothing.
type identity struct {
	obj  *unstructured.Unstructured
	name string
	spec ClusterIdentitySpec
	err  error

	pods, namespaces labels.Selector
	id               *template.Template
	dnsNames         []*template.Template
	selectors        []*template.Template
	x509TTL, jwtTTL  time.Duration
}

// templateData is what the templates see.
type templateData struct {
	TrustDomain string
	ClusterName string
	PodMeta     *metav1.ObjectMeta
	PodSpec     *corev1.PodSpec
	NodeMeta    *metav1.ObjectMeta
	NodeSpec    *corev1.NodeSpec
}

func compileIdentity(u *unstructured.Unstructured) *identity {
	id := &identity{obj: u, name: u.GetName()}
	id.err = id.compile()
	return id
}

func (id *identity) compile() error {
	if err := decodeSpec(id.obj, &id.spec); err != nil {
		return err
	}
	s := &id.spec
	if len(s.FederatesWith) > 0 {
		return errors.New("federatesWith: Tally does not federate with other trust domains; remove the field")
	}
	var err error
	if id.pods, err = selector("podSelector", s.PodSelector); err != nil {
		return err
	}
	if id.namespaces, err = selector("namespaceSelector", s.NamespaceSelector); err != nil {
		return err
	}
	if id.id, err = parse("spiffeIDTemplate", s.SPIFFEIDTemplate); err != nil {
		return err
	}
	for i, t := range s.DNSNameTemplates {
		tmpl, err := parse(fmt.Sprintf("dnsNameTemplates[%d]", i), t)
		if err != nil {
			return err
		}
		id.dnsNames = append(id.dnsNames, tmpl)
	}
	for i, t := range s.WorkloadSelectorTemplates {
		tmpl, err := parse(fmt.Sprintf("workloadSelectorTemplates[%d]", i), t)
		if err != nil {
			return err
		}
		id.selectors = append(id.selectors, tmpl)
	}
	if id.x509TTL, err = ttl("x509TTL", s.X509TTL); err != nil {
		return err
	}
	if id.jwtTTL, err = ttl("jwtTTL", s.JWTTTL); err != nil {
		return err
	}
	return nil
}

func selector(field string, s *metav1.LabelSelector) (labels.Selector, error) {
	if s == nil {
		return labels.Everything(), nil
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return sel, nil
}

// parse parses a template that fails on a missing map key rather than
// rendering "<no value>" into an ID.
func parse(field, text string) (*template.Template, error) {
	t, err := template.New(field).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return t, nil
}

// selects reports whether the identity applies to a pod in namespace ns.
func (id *identity) selects(pod *corev1.Pod, ns *corev1.Namespace) bool {
	if id.err != nil || !id.pods.Matches(labels.Set(pod.Labels)) {
		return false
	}
	if id.namespaces.Empty() {
		return true
	}
	return ns != nil && id.namespaces.Matches(labels.Set(ns.Labels))
}

// render returns the entry of pod, whose node's agent has ID parent; the
// entry still has to pass the registry's validation.
func (id *identity) render(td spiffeid.TrustDomain, d *templateData, pod *corev1.Pod, parent string, cluster string) (store.Entry, error) {
	spiffeID, err := execute(id.id, d)
	if err != nil {
		return store.Entry{}, err
	}
	parsed, err := spiffeid.FromString(spiffeID)
	if err != nil {
		return store.Entry{}, fmt.Errorf("%w: spiffeIDTemplate renders %q: %w", errRender, spiffeID, err)
	}
	if !parsed.MemberOf(td) {
		return store.Entry{}, fmt.Errorf("%w: spiffeIDTemplate renders %q, outside trust domain %q", errRender, spiffeID, td.Name())
	}
	e := store.Entry{
		SPIFFEID: spiffeID,
		ParentID: parent,
		Selectors: []store.Selector{
			{Type: k8s.Type, Value: "ns:" + pod.Namespace},
			{Type: k8s.Type, Value: "pod-uid:" + k8s.PodUID(pod)},
		},
		X509TTL: id.x509TTL,
		JWTTTL:  id.jwtTTL,
		Hint:    id.spec.Hint,
		Admin:   id.spec.Admin,
		Owner: &store.Owner{Cluster: cluster, Kind: registry.OwnerClusterIdentity, Name: id.name,
			Pod: pod.Namespace + "/" + pod.Name, PodUID: string(pod.UID)},
	}
	for _, t := range id.dnsNames {
		name, err := execute(t, d)
		if err != nil {
			return store.Entry{}, err
		}
		if name != "" { // a template may render nothing for some pods
			e.DNSNames = append(e.DNSNames, name)
		}
	}
	for _, t := range id.selectors {
		s, err := execute(t, d)
		if err != nil {
			return store.Entry{}, err
		}
		sel, err := registry.ParseSelector(s)
		if err != nil {
			return store.Entry{}, fmt.Errorf("%w: %s renders %q: %w", errRender, t.Name(), s, err)
		}
		e.Selectors = append(e.Selectors, sel)
	}
	return e, nil
}

func execute(t *template.Template, d *templateData) (string, error) {
	var b strings.Builder
	if err := t.Execute(&b, d); err != nil {
		return "", fmt.Errorf("%w: %w", errRender, err)
	}
	return strings.TrimSpace(b.String()), nil
}

// staticEntry renders a ClusterStaticEntry.
func staticEntry(u *unstructured.Unstructured, cluster string) (store.Entry, error) {
	var spec ClusterStaticEntrySpec
	if err := decodeSpec(u, &spec); err != nil {
		return store.Entry{}, err
	}
	e := store.Entry{
		SPIFFEID: spec.SPIFFEID,
		ParentID: spec.ParentID,
		DNSNames: spec.DNSNames,
		Hint:     spec.Hint,
		Admin:    spec.Admin,
		Owner:    &store.Owner{Cluster: cluster, Kind: registry.OwnerClusterStaticEntry, Name: u.GetName()},
	}
	for _, s := range spec.Selectors {
		sel, err := registry.ParseSelector(s)
		if err != nil {
			return store.Entry{}, err
		}
		e.Selectors = append(e.Selectors, sel)
	}
	var err error
	if e.X509TTL, err = ttl("x509TTL", spec.X509TTL); err != nil {
		return store.Entry{}, err
	}
	if e.JWTTTL, err = ttl("jwtTTL", spec.JWTTTL); err != nil {
		return store.Entry{}, err
	}
	return e, nil
}

func labelsOf(ns *corev1.Namespace) labels.Set { return labels.Set(ns.Labels) }
