package registry

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/tallyid/tally/ca/store"
)

// selectorKinds lists, per selector type, the keys a value may start with
// and how many ":"-separated parts follow the key. A selector value is
// "<key>:<rest>"; rest must have exactly parts non-empty parts.
var selectorKinds = map[string]map[string]int{
	"unix": {"uid": 1, "gid": 1, "user": 1, "group": 1, "path": 1},
	"k8s": {
		"ns": 1, "sa": 1, "pod-name": 1, "pod-uid": 1, "pod-label": 2, "pod-owner": 2,
		"container-name": 1, "container-image": 1, "node-name": 1,
	},
	"k8s_psat": {
		"cluster": 1, "agent_ns": 1, "agent_sa": 1, "agent_pod_name": 1, "agent_pod_uid": 1,
		"agent_node_name": 1, "agent_node_uid": 1, "agent_node_label": 2,
	},
}

const maxSelectorLen = 1024

// ParseSelector parses "type:value", for example "unix:uid:1000".
func ParseSelector(s string) (store.Selector, error) {
	typ, value, ok := strings.Cut(s, ":")
	if !ok {
		return store.Selector{}, fmt.Errorf("%w: selector %q: want type:value", ErrInvalid, s)
	}
	sel := store.Selector{Type: typ, Value: value}
	return sel, ValidateSelector(sel)
}

// ValidateSelector checks a selector's text (CheckText) and its type and
// key against the known ones.
func ValidateSelector(s store.Selector) error {
	if err := CheckText("selector.type", s.Type); err != nil {
		return err
	}
	if err := CheckText("selector.value", s.Value); err != nil {
		return err
	}
	if len(s.Type)+len(s.Value) > maxSelectorLen {
		return fmt.Errorf("%w: selector %q longer than %d bytes", ErrInvalid, s.String(), maxSelectorLen)
	}
	keys, ok := selectorKinds[s.Type]
	if !ok {
		return fmt.Errorf("%w: selector %q: unknown type %q (known: k8s, k8s_psat, unix)", ErrInvalid, s.String(), s.Type)
	}
	key, rest, _ := strings.Cut(s.Value, ":")
	parts, ok := keys[key]
	if !ok {
		return fmt.Errorf("%w: selector %q: unknown %s key %q", ErrInvalid, s.String(), s.Type, key)
	}
	fields := strings.SplitN(rest, ":", parts)
	if rest == "" || len(fields) != parts {
		return fmt.Errorf("%w: selector %q: %s:%s needs %d value part(s)", ErrInvalid, s.String(), s.Type, key, parts)
	}
	for _, f := range fields {
		if f == "" || strings.TrimSpace(f) != f {
			return fmt.Errorf("%w: selector %q: empty or padded value", ErrInvalid, s.String())
		}
	}
	if s.Type == "unix" && (key == "uid" || key == "gid") {
		if n, err := strconv.ParseUint(rest, 10, 32); err != nil || n > 1<<31 {
			return fmt.Errorf("%w: selector %q: %s must be a decimal id", ErrInvalid, s.String(), key)
		}
	}
	if s.Type == "unix" && key == "path" && !strings.HasPrefix(rest, "/") {
		return fmt.Errorf("%w: selector %q: path must be absolute", ErrInvalid, s.String())
	}
	return nil
}

// SubsetOf reports whether every selector of a is in b.
func SubsetOf(a, b []store.Selector) bool {
	if len(a) > len(b) {
		return false
	}
	set := make(map[store.Selector]struct{}, len(b))
	for _, s := range b {
		set[s] = struct{}{}
	}
	for _, s := range a {
		if _, ok := set[s]; !ok {
			return false
		}
	}
	return true
}
