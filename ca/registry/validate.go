package registry

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tallyid/tally/ca/store"
	"github.com/tallyid/tally/internal/dnsname"
	"github.com/tallyid/tally/internal/reserved"
)

// Limits bound what an entry may ask for.
type Limits struct {
	// MaxTTL is the longest X.509 or JWT SVID lifetime an entry may set
	// (the CA TTL / 6).
	MaxTTL time.Duration
}

const (
	maxHintLen     = 1024
	maxDNSNames    = 64
	maxSelectors   = 64
	maxSPIFFEIDLen = 2048
	// maxOwnerFieldLen bounds each owner field: names of Kubernetes objects
	// are at most 253 bytes, "namespace/name" twice that.
	maxOwnerFieldLen = 512
)

// ValidateEntry checks an entry for creation or update and normalises it
// (selectors sorted, DNS names lowercased). It returns errors wrapping
// ErrInvalid that name the offending field. Every text field is first
// checked with CheckText.
func ValidateEntry(td spiffeid.TrustDomain, lim Limits, e *store.Entry) error {
	if err := checkEntryText(e); err != nil {
		return err
	}
	id, err := validateID(td, "spiffe_id", e.SPIFFEID)
	if err != nil {
		return err
	}
	if id.Path() == "" {
		return fmt.Errorf("%w: spiffe_id %q: a workload ID needs a path", ErrInvalid, e.SPIFFEID)
	}
	if reserved.IsReserved(id) {
		return fmt.Errorf("%w: spiffe_id %q: the /tally/ path is reserved for agents and servers", ErrInvalid, e.SPIFFEID)
	}
	if _, err := validateID(td, "parent_id", e.ParentID); err != nil {
		return err
	}
	if len(e.Selectors) == 0 {
		return fmt.Errorf("%w: selectors: at least one selector is required", ErrInvalid)
	}
	if len(e.Selectors) > maxSelectors {
		return fmt.Errorf("%w: selectors: more than %d", ErrInvalid, maxSelectors)
	}
	for _, s := range e.Selectors {
		if err := ValidateSelector(s); err != nil {
			return err
		}
	}
	SortSelectors(e.Selectors)
	for i := 1; i < len(e.Selectors); i++ {
		if e.Selectors[i] == e.Selectors[i-1] {
			return fmt.Errorf("%w: selectors: %q given twice", ErrInvalid, e.Selectors[i].String())
		}
	}
	if err := validateTTL("x509_ttl", e.X509TTL, lim.MaxTTL); err != nil {
		return err
	}
	if err := validateTTL("jwt_ttl", e.JWTTTL, lim.MaxTTL); err != nil {
		return err
	}
	if len(e.DNSNames) > maxDNSNames {
		return fmt.Errorf("%w: dns_names: more than %d", ErrInvalid, maxDNSNames)
	}
	for i, name := range e.DNSNames {
		if err := validateDNSName(name); err != nil {
			return err
		}
		e.DNSNames[i] = strings.ToLower(name)
	}
	if len(e.Hint) > maxHintLen {
		return fmt.Errorf("%w: hint: longer than %d bytes", ErrInvalid, maxHintLen)
	}
	return validateOwner(e.Owner)
}

// Owner kinds: the Kubernetes resources the registrar renders entries from.
const (
	OwnerClusterIdentity    = "ClusterIdentity"
	OwnerClusterStaticEntry = "ClusterStaticEntry"
)

func validateOwner(o *store.Owner) error {
	if o == nil {
		return nil
	}
	for field, v := range map[string]string{"owner.cluster": o.Cluster, "owner.name": o.Name, "owner.pod": o.Pod, "owner.pod_uid": o.PodUID} {
		if err := CheckText(field, v); err != nil {
			return err
		}
		if len(v) > maxOwnerFieldLen {
			return fmt.Errorf("%w: %s: longer than %d bytes", ErrInvalid, field, maxOwnerFieldLen)
		}
	}
	if o.Cluster == "" || o.Name == "" {
		return fmt.Errorf("%w: owner: cluster and name are required", ErrInvalid)
	}
	switch o.Kind {
	case OwnerClusterIdentity:
		if o.Pod == "" || o.PodUID == "" {
			return fmt.Errorf("%w: owner: a %s entry names its pod and pod UID", ErrInvalid, o.Kind)
		}
	case OwnerClusterStaticEntry:
		if o.Pod != "" || o.PodUID != "" {
			return fmt.Errorf("%w: owner: a %s entry is for no pod", ErrInvalid, o.Kind)
		}
	default:
		return fmt.Errorf("%w: owner.kind %q: not %s or %s", ErrInvalid, o.Kind, OwnerClusterIdentity, OwnerClusterStaticEntry)
	}
	return nil
}

func validateID(td spiffeid.TrustDomain, field, s string) (spiffeid.ID, error) {
	if s == "" {
		return spiffeid.ID{}, fmt.Errorf("%w: %s is required", ErrInvalid, field)
	}
	if len(s) > maxSPIFFEIDLen {
		return spiffeid.ID{}, fmt.Errorf("%w: %s: longer than %d bytes", ErrInvalid, field, maxSPIFFEIDLen)
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %s %q: %w", ErrInvalid, field, s, err)
	}
	if !id.MemberOf(td) {
		return spiffeid.ID{}, fmt.Errorf("%w: %s %q: not in trust domain %q", ErrInvalid, field, s, td.Name())
	}
	return id, nil
}

func validateTTL(field string, ttl, limit time.Duration) error {
	switch {
	case ttl < 0:
		return fmt.Errorf("%w: %s: %s is negative", ErrInvalid, field, ttl)
	case ttl > 0 && ttl < time.Second:
		return fmt.Errorf("%w: %s: %s is shorter than 1s", ErrInvalid, field, ttl)
	case limit > 0 && ttl > limit:
		return fmt.Errorf("%w: %s: %s exceeds the maximum %s (CA TTL / 6)", ErrInvalid, field, ttl, limit)
	}
	return nil
}

func validateDNSName(name string) error {
	if err := dnsname.Check(name); err != nil {
		return fmt.Errorf("%w: dns_names: %q is not a DNS name: %w", ErrInvalid, name, err)
	}
	return nil
}

// SortSelectors orders selectors by type then value.
func SortSelectors(s []store.Selector) {
	slices.SortFunc(s, func(a, b store.Selector) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Value, b.Value))
	})
}
