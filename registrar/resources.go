package registrar

import (
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The resources of API group tally.dev, version v1alpha1, as the CRDs in
// deploy/crds define them.
var (
	clusterIdentities    = schema.GroupVersionResource{Group: "tally.dev", Version: "v1alpha1", Resource: "clusteridentities"}
	clusterStaticEntries = schema.GroupVersionResource{Group: "tally.dev", Version: "v1alpha1", Resource: "clusterstaticentries"}
)

// ClusterIdentitySpec is the spec of a ClusterIdentity.
type ClusterIdentitySpec struct {
	SPIFFEIDTemplate          string                `json:"spiffeIDTemplate"`
	PodSelector               *metav1.LabelSelector `json:"podSelector,omitempty"`
	NamespaceSelector         *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	DNSNameTemplates          []string              `json:"dnsNameTemplates,omitempty"`
	WorkloadSelectorTemplates []string              `json:"workloadSelectorTemplates,omitempty"`
	X509TTL                   string                `json:"x509TTL,omitempty"`
	JWTTTL                    string                `json:"jwtTTL,omitempty"`
	Hint                      string                `json:"hint,omitempty"`
	Fallback                  bool                  `json:"fallback,omitempty"`
	Admin                     bool                  `json:"admin,omitempty"`
	FederatesWith             []string              `json:"federatesWith,omitempty"`
}

// ClusterStaticEntrySpec is the spec of a ClusterStaticEntry: an entry for
// a workload that is not a pod.
type ClusterStaticEntrySpec struct {
	SPIFFEID  string   `json:"spiffeID"`
	ParentID  string   `json:"parentID"`
	Selectors []string `json:"selectors"`
	DNSNames  []string `json:"dnsNames,omitempty"`
	X509TTL   string   `json:"x509TTL,omitempty"`
	JWTTTL    string   `json:"jwtTTL,omitempty"`
	Hint      string   `json:"hint,omitempty"`
	Admin     bool     `json:"admin,omitempty"`
}

// decodeSpec decodes u's spec into spec. The API server has validated it
// against the CRD's schema; what a schema cannot say is checked by the
// caller.
func decodeSpec(u *unstructured.Unstructured, spec any) error {
	raw, ok := u.Object["spec"].(map[string]any)
	if !ok {
		return fmt.Errorf("spec is missing")
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, spec); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	return nil
}

// ttl parses an optional Go duration of a spec field; "" is 0 (the
// server's default).
func ttl(field, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", field, err)
	}
	return d, nil
}
