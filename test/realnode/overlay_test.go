package realnode_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"

	"github.com/stretchr/testify/require"
)

// overlayTemplate is the one overlay both installs go through: resources are deploy/base for
// the kustomize install, and the rendered chart for the Helm install (as helm's
// post-renderer). Every patch is something this machine forces, said in its comment; the
// manifests are otherwise installed as they are. Both installs name their objects the same
// (tally-server, tally-agent in the namespace tally: the release is called tally), so the
// patches are the same.
const overlayTemplate = `# test/realnode's overlay: Tally's manifests changed only where this machine forces it.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {{.Resource}}
  # No volume provisioner runs: a hostPath PersistentVolume (a directory the test made,
  # owned by 65532 as a provisioned volume would be writable through fsGroup, which hostPath
  # volumes ignore), bound in advance to the StatefulSet's claim.
  - pv.yaml
{{- if .Kustomize}}
# The images of scripts/images, imported into the node (nothing can be pulled): their tag is
# the repository's version, not the base's dev. (The Helm install sets the chart's values.)
images:
  - name: tally/tally-server
    newTag: "{{.ServerTag}}"
  - name: tally/tally-agent
    newTag: "{{.AgentTag}}"
{{- end}}
patches:
  - target: {kind: StatefulSet, name: tally-server}
    patch: |-
      # No kube-proxy: Service VIPs do not route, and the apiserver listens on 127.0.0.1
      # only, which pods on the pod network cannot reach. The server runs on the host
      # network ...
      - op: add
        path: /spec/template/spec/hostNetwork
        value: true
      - op: add
        path: /spec/template/spec/dnsPolicy
        value: ClusterFirstWithHostNet
      # ... and its in-cluster client config (these two variables) names the apiserver
      # itself rather than the kubernetes Service's VIP.
      - op: add
        path: /spec/template/spec/containers/0/env
        value:
          - {name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}
          - {name: KUBERNETES_SERVICE_PORT, value: "{{.APIPort}}"}
      # On the host network the manifests' ports (8081, 8443, 8080, and the web listener's
      # default 127.0.0.1:8444) are host ports of a shared machine: free ones instead, as
      # flags (they override the config file) ...
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --bind-address=0.0.0.0:{{.NodePort}}
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --http-address=0.0.0.0:{{.HTTPPort}}
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --health-address=0.0.0.0:{{.HealthPort}}
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --web-address=127.0.0.1:{{.WebPort}}
      # ... and as the container ports (a host-network pod's container port is its host
      # port; the probes name the port health).
      - {op: test, path: /spec/template/spec/containers/0/ports/0/name, value: node-api}
      - {op: replace, path: /spec/template/spec/containers/0/ports/0/containerPort, value: {{.NodePort}}}
      - {op: test, path: /spec/template/spec/containers/0/ports/1/name, value: https}
      - {op: replace, path: /spec/template/spec/containers/0/ports/1/containerPort, value: {{.HTTPPort}}}
      - {op: test, path: /spec/template/spec/containers/0/ports/2/name, value: health}
      - {op: replace, path: /spec/template/spec/containers/0/ports/2/containerPort, value: {{.HealthPort}}}
      # The Admin API socket in a host directory instead of an emptyDir: the tests run
      # tallyctl on the host (this machine has no kubectl exec, and the server image has no
      # tallyctl to exec). The socket stays 0600: root on the node is the admin.
      - {op: test, path: /spec/template/spec/volumes/1/name, value: admin}
      - op: replace
        path: /spec/template/spec/volumes/1
        value: {name: admin, hostPath: {path: "{{.AdminDir}}", type: Directory}}
{{- if .Kustomize}}
      # This test cluster's name, which agent IDs and the registrar's entries carry, instead
      # of the base's demo-cluster. (The Helm install sets the chart's clusterName.)
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --psat-cluster={{.Cluster}}
{{- end}}
  - target: {kind: DaemonSet, name: tally-agent}
    patch: |-
      # The server's Service does not route (no kube-proxy): the agent dials the server's
      # host-network port on the node's loopback. (It authenticates the server by its SVID,
      # not by the address.)
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --server-address=127.0.0.1:{{.NodePort}}
      # The agent is on the host network too: a free port for its health listener.
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --health-address=0.0.0.0:{{.AgentHealthPort}}
      - {op: test, path: /spec/template/spec/containers/0/ports/0/name, value: health}
      - {op: replace, path: /spec/template/spec/containers/0/ports/0/containerPort, value: {{.AgentHealthPort}}}
{{- if .Kustomize}}
      # Host directories of this test instead of /run/tally/sockets and /var/lib/tally-agent:
      # the machine is shared and nothing may be left on it. They do not exist yet: the
      # kubelet creates them (DirectoryOrCreate), as on a fresh node. (The Helm install sets
      # the chart's socketDir and dataDir.)
      - {op: test, path: /spec/template/spec/volumes/2/name, value: sockets}
      - {op: replace, path: /spec/template/spec/volumes/2/hostPath/path, value: "{{.SocketDir}}"}
      - {op: test, path: /spec/template/spec/volumes/3/name, value: data}
      - {op: replace, path: /spec/template/spec/volumes/3/hostPath/path, value: "{{.AgentDataDir}}"}
{{- end}}
`

const pvTemplate = `apiVersion: v1
kind: PersistentVolume
metadata:
  name: {{.PVName}}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  claimRef: {namespace: tally, name: data-tally-server-0}
  hostPath: {path: "{{.ServerDataDir}}", type: Directory}
`

// overlay is what the templates are filled with.
type overlay struct {
	Kustomize bool   // the kustomize install; false: the Helm post-renderer's
	Resource  string // deploy/base (relative), or the rendered chart's file
	Cluster   string // the psat cluster name
	PVName    string

	ServerTag, AgentTag string

	APIPort                                                  string
	NodePort, HTTPPort, HealthPort, WebPort, AgentHealthPort int

	// host directories
	AdminDir, ServerDataDir, SocketDir, AgentDataDir string
}

// nonroot is the uid and gid the server runs as (the images' user).
const nonroot = 65532

// newOverlay picks free host ports and the host directories under root: the server's data
// and admin directories are made (owned by the server's user), the agent's are left to the
// kubelet.
func newOverlay(t *testing.T, root, apiURL, cluster string) *overlay {
	t.Helper()
	ports := freePorts(t, 5)
	_, apiPort, err := net.SplitHostPort(strings.TrimPrefix(apiURL, "https://"))
	require.NoError(t, err)
	o := &overlay{
		Cluster: cluster, PVName: "tally-realnode-" + cluster, APIPort: apiPort,
		NodePort: ports[0], HTTPPort: ports[1], HealthPort: ports[2], WebPort: ports[3], AgentHealthPort: ports[4],
		AdminDir: filepath.Join(root, "server-run"), ServerDataDir: filepath.Join(root, "server-data"),
		SocketDir: filepath.Join(root, "agent-sockets"), AgentDataDir: filepath.Join(root, "agent-data"),
	}
	for _, d := range []string{o.AdminDir, o.ServerDataDir} {
		require.NoError(t, os.Mkdir(d, 0o700))
		require.NoError(t, os.Chown(d, nonroot, nonroot))
	}
	return o
}

// AdminSocket is the server's Admin API socket, as the host sees it.
func (o *overlay) AdminSocket() string { return filepath.Join(o.AdminDir, "admin.sock") }

// write writes kustomization.yaml and pv.yaml into dir.
func (o *overlay) write(t *testing.T, dir string) {
	t.Helper()
	for name, text := range map[string]string{"kustomization.yaml": overlayTemplate, "pv.yaml": pvTemplate} {
		f, err := os.Create(filepath.Join(dir, name))
		require.NoError(t, err)
		require.NoError(t, template.Must(template.New(name).Option("missingkey=error").Parse(text)).Execute(f, o))
		require.NoError(t, f.Close())
	}
}

// freePorts returns n distinct TCP ports that were free on every address a moment ago (the
// server and agent listen on 0.0.0.0).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", ":0")
		require.NoError(t, err)
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func (o *overlay) String() string {
	return fmt.Sprintf("ports node-api %d, https %d, health %d, web %d, agent health %d; host dirs %s, %s, %s, %s",
		o.NodePort, o.HTTPPort, o.HealthPort, o.WebPort, o.AgentHealthPort, o.AdminDir, o.ServerDataDir, o.SocketDir, o.AgentDataDir)
}
