// Package deploy gives tests what they need to render the project's
// manifests (deploy/): the helm binary and a decoder for rendered YAML.
package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"

	"github.com/tallyid/tally/test/internal/repo"
)

var helm struct {
	once sync.Once
	bin  string
	err  error
}

// Helm returns the path of the helm binary. The first call in a test
// process runs scripts/helm/build.sh, which returns at once when helm is
// already built in .cache/helm and builds it otherwise (a few minutes cold).
func Helm(t testing.TB) string {
	t.Helper()
	helm.once.Do(func() {
		root, err := repo.Root()
		if err != nil {
			helm.err = err
			return
		}
		cmd := exec.Command(filepath.Join(root, "scripts", "helm", "build.sh"))
		cmd.Dir = root
		cmd.Stderr = os.Stderr // build progress, if any
		out, err := cmd.Output()
		if err != nil {
			helm.err = fmt.Errorf("scripts/helm/build.sh: %w\n%s", err, out)
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		helm.bin = filepath.Join(strings.TrimSpace(lines[len(lines)-1]), "helm")
	})
	require.NoError(t, helm.err)
	return helm.bin
}

// DecodeObjects splits a multi-document YAML stream into objects.
func DecodeObjects(t testing.TB, raw []byte) []*unstructured.Unstructured {
	t.Helper()
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var objs []*unstructured.Unstructured
	for {
		var obj unstructured.Unstructured
		err := dec.Decode(&obj.Object)
		if errors.Is(err, io.EOF) {
			return objs
		}
		require.NoError(t, err)
		if len(obj.Object) != 0 {
			objs = append(objs, &obj)
		}
	}
}
