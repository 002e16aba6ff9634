// Package config loads YAML configuration files into tagged structs, the
// same way for every Tally binary: unknown keys are refused, and every
// error names the file, the line and the key.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"
)

// LoadYAML decodes the YAML mapping in path over dst, a pointer to a struct
// whose fields carry `yaml:"key"` tags. Keys absent from the file keep
// their value in dst.
func LoadYAML(path string, dst any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(raw)).Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("config %s: line %d: want a mapping of keys to values", path, root.Line)
	}
	fields := yamlFields(dst)
	for i := 0; i+1 < len(root.Content); i += 2 {
		key, value := root.Content[i], root.Content[i+1]
		field, ok := fields[key.Value]
		if !ok {
			return fmt.Errorf("config %s: line %d: unknown key %q", path, key.Line, key.Value)
		}
		if err := value.Decode(field.Addr().Interface()); err != nil {
			return fmt.Errorf("config %s: line %d: key %q: %w", path, key.Line, key.Value, err)
		}
	}
	return nil
}

func yamlFields(dst any) map[string]reflect.Value {
	v := reflect.ValueOf(dst).Elem()
	out := make(map[string]reflect.Value, v.NumField())
	for i := range v.NumField() {
		if tag := v.Type().Field(i).Tag.Get("yaml"); tag != "" {
			out[tag] = v.Field(i)
		}
	}
	return out
}

// Resolve builds the final configuration: defaults, then the file (if
// any), then every flag set on the command line. bind registers a binary's
// flags writing into a config value; flags is the parsed command line.
func Resolve[C any](defaults C, file string, flags *pflag.FlagSet, bind func(*pflag.FlagSet, *C)) (C, error) {
	cfg := defaults
	if file != "" {
		if err := LoadYAML(file, &cfg); err != nil {
			return cfg, err
		}
	}
	overlay := pflag.NewFlagSet("overlay", pflag.ContinueOnError)
	bind(overlay, &cfg)
	var err error
	flags.Visit(func(f *pflag.Flag) {
		target := overlay.Lookup(f.Name)
		if target == nil || err != nil {
			return // flags that are not config options (--config)
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			err = target.Value.(pflag.SliceValue).Replace(sv.GetSlice())
			return
		}
		err = overlay.Set(f.Name, f.Value.String())
	})
	if err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	return cfg, nil
}

// CheckTrustDomain validates the trust_domain key of a config (both
// binaries have one); the error names the key.
func CheckTrustDomain(name string) error {
	if name == "" {
		return errors.New("config: trust_domain is required")
	}
	if _, err := spiffeid.TrustDomainFromString(name); err != nil {
		return fmt.Errorf("config: trust_domain %q: %w", name, err)
	}
	return nil
}
