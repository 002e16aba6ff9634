package realnode_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/tallyid/tally/test/internal/deploy"
)

// TestHelm installs deploy/helm/tally with `helm install` (the machine's changes through the
// same overlay, as helm's post-renderer) and has a workload get its SVID.
func TestHelm(t *testing.T) {
	c, n, a := setup(t)
	o := newOverlay(t, t.TempDir(), c.URL, "realnode-helm")
	o.Resource = "chart.yaml" // written by the post-renderer
	dir := t.TempDir()
	o.write(t, dir)
	in := newInstall(t, c, n, a, o)
	t0 := time.Now()
	in.helmInstall(dir)
	in.up()
	t.Logf("installed in %s", time.Since(t0).Round(10*time.Millisecond))
	in.attestedAgent()

	w := newWorkloads(t, in)
	w.identity("watch", "watch", idTemplate)
	id := w.spiffeID("watcher")
	watch := w.tallyctl("watcher", "watcher", "watch", corev1.RestartPolicyAlways, "svid", "watch", "-o", "json")
	w.waitLog(watch, "its SVID", func(log string) bool { return servedAfter(log, id, -1) })
	in.waitEntry(w.waitPod(watch, "running", podReady), id)
}

// helmInstall runs helm install of the chart as the release tally in the namespace tally,
// with the chart's own values for what it has values for (image tags, the cluster name, the
// agent's host directories) and the overlay in dir, as post-renderer, for the rest. It is
// uninstalled when the test ends, and the namespace and the CRDs (which helm leaves) deleted.
func (in *install) helmInstall(dir string) {
	in.t.Helper()
	exe, err := os.Executable()
	require.NoError(in.t, err)
	in.t.Cleanup(func() {
		// no --wait: the release's PersistentVolume stays (pv-protection) until the
		// StatefulSet's claim, which helm leaves, goes with the namespace
		if out, err := in.helm(dir, "uninstall", "tally", "--namespace", namespace); err != nil {
			in.t.Errorf("helm uninstall: %v\n%s", err, out)
		}
		deleteAndWait(in.t, in.dyn.Resource(namespaceGVR), "namespace", namespace)
		for _, name := range crds {
			deleteAndWait(in.t, in.dyn.Resource(crdGVR), "CRD", name)
		}
		deleteAndWait(in.t, in.dyn.Resource(pvGVR), "PersistentVolume", in.o.PVName)
	})
	out, err := in.helm(dir, "install", "tally", filepath.Join(repoRoot(), "deploy", "helm", "tally"),
		"--namespace", namespace, "--create-namespace",
		"--set", "clusterName="+in.o.Cluster,
		"--set", "server.image.tag="+in.a.tag("tally-server"),
		"--set", "agent.image.tag="+in.a.tag("tally-agent"),
		"--set", "agent.socketDir="+in.o.SocketDir,
		"--set", "agent.dataDir="+in.o.AgentDataDir,
		"--post-renderer", exe)
	require.NoError(in.t, err, "helm install: %s", out)
	in.t.Logf("helm install:\n%s", out)
	waitCRDs(in.t, in.dyn)
}

// helm runs the helm binary against the cluster, with its own empty helm home; dir is the
// overlay the post-renderer uses.
func (in *install) helm(dir string, args ...string) (string, error) {
	home := in.t.TempDir()
	cmd := exec.Command(deploy.Helm(in.t), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+in.c.Kubeconfig,
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"), "HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		postRenderEnv+"="+dir) // read by this binary when helm runs it as the post-renderer
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// postRenderEnv names the overlay directory when helm runs this test binary as its
// post-renderer.
const postRenderEnv = "TALLY_REALNODE_POST_RENDER"

// postRender is this binary as helm's post-renderer, what a user does with a kustomize
// wrapper script: the rendered chart, on standard input, is written into the overlay's
// directory as chart.yaml, and the overlay's build goes to standard output.
func postRender(dir string) int {
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "post-render: %v\n", err)
		return 1
	}
	chart, err := io.ReadAll(os.Stdin)
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "chart.yaml"), chart, 0o600); err != nil {
		return fail(err)
	}
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return fail(fmt.Errorf("kustomize build: %w", err))
	}
	out, err := resMap.AsYaml()
	if err != nil {
		return fail(err)
	}
	if _, err := os.Stdout.Write(out); err != nil {
		return fail(err)
	}
	return 0
}
