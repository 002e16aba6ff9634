package bench

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
)

// staticWorkloadAPI answers FetchX509SVID with one precomputed response:
// the least work any Workload API server can do for these clients.
type staticWorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	resp *workload.X509SVIDResponse
}

func (s staticWorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	if err := stream.Send(s.resp); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// startStaticWorkloadAPI serves staticWorkloadAPI on a Unix socket in this
// process and returns its address.
func startStaticWorkloadAPI(t testing.TB) string {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://example.org/floor")
	leaf, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), URIs: []*url.URL{u},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}, ca, leafKey.Public(), key)
	require.NoError(t, err)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(leafKey)
	resp := &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
		SpiffeId: u.String(), X509Svid: leaf, X509SvidKey: pkcs8, Bundle: caDER,
	}}}
	lis, err := net.Listen("unix", filepath.Join(t.TempDir(), "floor.sock"))
	require.NoError(t, err)
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, staticWorkloadAPI{resp: resp})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return "unix://" + lis.Addr().String()
}
