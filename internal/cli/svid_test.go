package cli

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

var federatedTD = spiffeid.RequireTrustDomainFromString("federated.example")

// workloadFixture is what a fakeWorkloadAPI serves, made fresh per test:
//   - web: an X509-SVID with hint "internal" under an intermediate CA (chain
//     of 2), expiring at testNow+1h; webRenewed is it expiring at testNow+2h;
//   - db: an X509-SVID with no hint straight under the root (chain of 1),
//     expiring at testNow+30m;
//   - the bundles of testTD (root) and federatedTD;
//   - a JWT signing key in jwtBundle; JWT-SVIDs expire at jwtExpiry.
type workloadFixture struct {
	root, federated      *x509.Certificate
	web, webRenewed, db  testSVID
	jwtKey               *ecdsa.PrivateKey
	jwtKeyID             string
	jwtBundle            *jwtbundle.Bundle
	jwtIssued, jwtExpiry time.Time
}

type testSVID struct {
	id     spiffeid.ID
	hint   string
	chain  []*x509.Certificate
	keyDER []byte
}

func newWorkloadFixture(t *testing.T) *workloadFixture {
	t.Helper()
	rootKey := newTestKey(t)
	root := newTestCert(t, caTemplate(testTD), rootKey.Public(), nil, rootKey)
	interKey := newTestKey(t)
	inter := newTestCert(t, caTemplate(testTD), interKey.Public(), root, rootKey)
	fedKey := newTestKey(t)

	svid := func(path, hint string, ttl time.Duration, parent *x509.Certificate, parentKey crypto.Signer) testSVID {
		id := spiffeid.RequireFromPath(testTD, path)
		key := newTestKey(t)
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		require.NoError(t, err)
		chain := []*x509.Certificate{newTestCert(t, &x509.Certificate{
			URIs:                  []*url.URL{id.URL()},
			NotBefore:             testNow.Add(-time.Minute),
			NotAfter:              testNow.Add(ttl),
			KeyUsage:              x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true,
		}, key.Public(), parent, parentKey)}
		if parent != root {
			chain = append(chain, parent)
		}
		return testSVID{id: id, hint: hint, chain: chain, keyDER: keyDER}
	}

	jwtKey := newTestKey(t)
	jwtBundle := jwtbundle.New(testTD)
	require.NoError(t, jwtBundle.AddJWTAuthority("jwt-key-1", jwtKey.Public()))
	// jwtsvid checks exp against the real clock.
	now := time.Now().Truncate(time.Second)
	return &workloadFixture{
		root:       root,
		federated:  newTestCert(t, caTemplate(federatedTD), fedKey.Public(), nil, fedKey),
		web:        svid("/web", "internal", time.Hour, inter, interKey),
		webRenewed: svid("/web", "internal", 2*time.Hour, inter, interKey),
		db:         svid("/db", "", 30*time.Minute, root, rootKey),
		jwtKey:     jwtKey,
		jwtKeyID:   "jwt-key-1",
		jwtBundle:  jwtBundle,
		jwtIssued:  now,
		jwtExpiry:  now.Add(5 * time.Minute),
	}
}

func newTestKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return key
}

func caTemplate(td spiffeid.TrustDomain) *x509.Certificate {
	return &x509.Certificate{
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             testNow.Add(-time.Hour),
		NotAfter:              testNow.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}

// newTestCert certifies pub with tmpl, signed by parent and parentKey, or
// self-signed when parent is nil.
func newTestCert(t *testing.T, tmpl *x509.Certificate, pub crypto.PublicKey, parent *x509.Certificate, parentKey crypto.Signer) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	require.NoError(t, err)
	tmpl.SerialNumber = serial
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert
}

func rawCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}

// x509Response is a Workload API update holding svids, each with the root
// bundle, and the federated bundle.
func (fx *workloadFixture) x509Response(svids ...testSVID) *workload.X509SVIDResponse {
	resp := &workload.X509SVIDResponse{
		FederatedBundles: map[string][]byte{federatedTD.IDString(): fx.federated.Raw},
	}
	for _, s := range svids {
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    s.id.String(),
			X509Svid:    rawCerts(s.chain...),
			X509SvidKey: s.keyDER,
			Bundle:      fx.root.Raw,
			Hint:        s.hint,
		})
	}
	return resp
}

// signJWT returns a JWT-SVID for id and audience signed with the fixture's
// key, or with key if it is not nil.
func (fx *workloadFixture) signJWT(id spiffeid.ID, audience []string, key *ecdsa.PrivateKey) (string, error) {
	if key == nil {
		key = fx.jwtKey
	}
	signer, err := jose.NewSigner(jose.SigningKey{
		Algorithm: jose.ES256,
		Key:       jose.JSONWebKey{Key: key, KeyID: fx.jwtKeyID},
	}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", err
	}
	return jwt.Signed(signer).Claims(jwt.Claims{
		Subject:  id.String(),
		Audience: audience,
		IssuedAt: jwt.NewNumericDate(fx.jwtIssued),
		Expiry:   jwt.NewNumericDate(fx.jwtExpiry),
	}).Serialize()
}

// fakeWorkloadAPI is a SPIFFE Workload API server for the fixture's
// identities. Like a real agent, it refuses calls without the
// "workload.spiffe.io: true" header.
type fakeWorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	fx *workloadFixture
	// x509Updates are sent in order on every FetchX509SVID stream, which then
	// stays open until the client leaves.
	x509Updates []*workload.X509SVIDResponse
	// x509Err, if set, is what FetchX509SVID fails with.
	x509Err error
}

// startWorkloadAPI serves f on a Unix socket in a fresh temporary directory
// until the test ends, and returns the socket path.
func startWorkloadAPI(t *testing.T, f *fakeWorkloadAPI) string {
	t.Helper()
	// Not t.TempDir(): its path can exceed the 108 bytes of a socket address.
	dir, err := os.MkdirTemp("", "tallyctl")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "agent.sock")
	lis, err := net.Listen("unix", socket)
	require.NoError(t, err)

	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return socket
}

// startDefaultWorkloadAPI serves the fixture with one X.509 update holding
// web and db.
func startDefaultWorkloadAPI(t *testing.T) (*workloadFixture, string) {
	t.Helper()
	fx := newWorkloadFixture(t)
	return fx, startWorkloadAPI(t, &fakeWorkloadAPI{fx: fx, x509Updates: []*workload.X509SVIDResponse{fx.x509Response(fx.web, fx.db)}})
}

func checkSecurityHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func (f *fakeWorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	if err := checkSecurityHeader(stream.Context()); err != nil {
		return err
	}
	if f.x509Err != nil {
		return f.x509Err
	}
	for _, u := range f.x509Updates {
		if err := stream.Send(u); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

func (f *fakeWorkloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	if err := checkSecurityHeader(stream.Context()); err != nil {
		return err
	}
	err := stream.Send(&workload.X509BundlesResponse{Bundles: map[string][]byte{
		testTD.IDString():      f.fx.root.Raw,
		federatedTD.IDString(): f.fx.federated.Raw,
	}})
	if err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (f *fakeWorkloadAPI) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if err := checkSecurityHeader(ctx); err != nil {
		return nil, err
	}
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	resp := &workload.JWTSVIDResponse{}
	for _, s := range []testSVID{f.fx.web, f.fx.db} {
		if req.SpiffeId != "" && req.SpiffeId != s.id.String() {
			continue
		}
		token, err := f.fx.signJWT(s.id, req.Audience, nil)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: s.id.String(), Svid: token, Hint: s.hint})
	}
	if len(resp.Svids) == 0 {
		return nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	return resp, nil
}

func (f *fakeWorkloadAPI) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	if err := checkSecurityHeader(ctx); err != nil {
		return nil, err
	}
	switch {
	case req.Audience == "":
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	case req.Svid == "":
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	svid, err := jwtsvid.ParseAndValidate(req.Svid, f.fx.jwtBundle, []string{req.Audience})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}

// TestFakeWorkloadAPIRequiresHeader shows that the commands passing against
// the fake send the Workload API's security header.
func TestFakeWorkloadAPIRequiresHeader(t *testing.T) {
	_, socket := startDefaultWorkloadAPI(t)
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()

	_, err = workload.NewSpiffeWorkloadAPIClient(conn).FetchJWTSVID(context.Background(), &workload.JWTSVIDRequest{Audience: []string{"a"}})
	require.Equal(t, codes.InvalidArgument, status.Code(err), err)
}

func TestWorkloadAPIAddress(t *testing.T) {
	wd, err := os.Getwd()
	require.NoError(t, err)
	tests := []struct {
		name, flag, env string
		want            string
		wantErr         string
	}{
		{name: "default", want: "unix:///run/tally/agent.sock"},
		{name: "env", env: "unix:///tmp/agent.sock", want: "unix:///tmp/agent.sock"},
		{name: "flag wins", flag: "/run/a.sock", env: "unix:///tmp/agent.sock", want: "unix:///run/a.sock"},
		{name: "relative flag", flag: "a.sock", want: "unix://" + filepath.Join(wd, "a.sock")},
		{name: "flag URL", flag: "unix:///run/a.sock", want: "unix:///run/a.sock"},
		{name: "bad flag URL", flag: "unix:a.sock", wantErr: `--socket-path "unix:a.sock": workload endpoint unix socket URI must not be opaque`},
		{name: "bad env", env: "/tmp/agent.sock", wantErr: `SPIFFE_ENDPOINT_SOCKET "/tmp/agent.sock": workload endpoint socket URI must have a "tcp" or "unix" scheme`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(workloadapi.SocketEnv, tt.env)
			got, err := (&workloadAPI{socketPath: tt.flag}).address()
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestSVIDFetchX509Text(t *testing.T) {
	_, socket := startDefaultWorkloadAPI(t)
	t.Setenv(workloadapi.SocketEnv, "unix://"+socket)

	res := runCLI(t, "", "", "svid", "fetch", "x509")
	require.Equal(t, 0, res.code, res.stderr)
	require.Equal(t, `SPIFFE ID:     spiffe://example.org/web
Hint:          internal
Expires:       2023-11-14T23:13:20Z
Chain length:  2

SPIFFE ID:     spiffe://example.org/db
Expires:       2023-11-14T22:43:20Z
Chain length:  1

Bundles:  example.org
          federated.example
`, res.stdout)
}

func TestSVIDFetchX509JSON(t *testing.T) {
	fx, socket := startDefaultWorkloadAPI(t)
	t.Setenv(workloadapi.SocketEnv, "unix:///nonexistent/agent.sock") // --socket-path wins

	res := runCLI(t, "", "", "svid", "fetch", "x509", "--socket-path", socket, "-o", "json")
	require.Equal(t, 0, res.code, res.stderr)
	require.NotContains(t, res.stdout, "PRIVATE KEY")
	var out x509ContextJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	rootPEM := certsPEM([]*x509.Certificate{fx.root})
	require.Equal(t, x509ContextJSON{
		SVIDs: []x509SVIDJSON{
			{SPIFFEID: "spiffe://example.org/web", Hint: "internal", ExpiresAt: "2023-11-14T23:13:20Z", Chain: certsPEM(fx.web.chain), Bundle: rootPEM},
			{SPIFFEID: "spiffe://example.org/db", ExpiresAt: "2023-11-14T22:43:20Z", Chain: certsPEM(fx.db.chain), Bundle: rootPEM},
		},
		Bundles: []x509BundleJSON{
			{TrustDomain: "example.org", Bundle: rootPEM},
			{TrustDomain: "federated.example", Bundle: certsPEM([]*x509.Certificate{fx.federated})},
		},
	}, out)
}

func TestSVIDFetchX509Write(t *testing.T) {
	fx, socket := startDefaultWorkloadAPI(t)
	dir := filepath.Join(t.TempDir(), "svids")

	res := runCLI(t, "", "", "svid", "fetch", "x509", "--socket-path", socket, "--write", dir)
	require.Equal(t, 0, res.code, res.stderr)
	require.NotContains(t, res.stdout, "PRIVATE KEY")
	require.Contains(t, res.stdout, "Chain length:  2\n"+
		"Files:         "+filepath.Join(dir, "svid.0.pem")+"\n"+
		"               "+filepath.Join(dir, "svid.0.key")+"\n"+
		"               "+filepath.Join(dir, "bundle.0.pem")+"\n\n")

	info, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), info.Mode().Perm())
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 6, "three files per SVID and no temporary files")

	for i, want := range []testSVID{fx.web, fx.db} {
		t.Run(want.id.Path(), func(t *testing.T) {
			svidPath := filepath.Join(dir, fmt.Sprintf("svid.%d.pem", i))
			keyPath := filepath.Join(dir, fmt.Sprintf("svid.%d.key", i))
			bundlePath := filepath.Join(dir, fmt.Sprintf("bundle.%d.pem", i))
			for path, mode := range map[string]os.FileMode{svidPath: 0o644, keyPath: 0o600, bundlePath: 0o644} {
				info, err := os.Stat(path)
				require.NoError(t, err)
				require.Equal(t, mode, info.Mode().Perm(), path)
			}

			svid, err := x509svid.Load(svidPath, keyPath)
			require.NoError(t, err)
			require.Equal(t, want.id, svid.ID)
			require.Equal(t, len(want.chain), len(svid.Certificates))
			keyDER, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
			require.NoError(t, err)
			require.Equal(t, want.keyDER, keyDER)

			bundle, err := x509bundle.Load(testTD, bundlePath)
			require.NoError(t, err)
			require.Equal(t, []*x509.Certificate{fx.root}, bundle.X509Authorities())
			_, _, err = x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(testNow))
			require.NoError(t, err)
		})
	}

	res = runCLI(t, "", "", "svid", "fetch", "x509", "--socket-path", socket, "--write", dir, "-o", "json")
	require.Equal(t, 0, res.code, res.stderr)
	require.NotContains(t, res.stdout, "PRIVATE KEY")
	var out x509ContextJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	require.Len(t, out.SVIDs, 2)
	require.Equal(t, filepath.Join(dir, "svid.1.pem"), out.SVIDs[1].SVIDPath)
	require.Equal(t, filepath.Join(dir, "svid.1.key"), out.SVIDs[1].KeyPath)
	require.Equal(t, filepath.Join(dir, "bundle.1.pem"), out.SVIDs[1].BundlePath)
}

func TestSVIDFetchErrors(t *testing.T) {
	fx := newWorkloadFixture(t)
	denied := startWorkloadAPI(t, &fakeWorkloadAPI{fx: fx, x509Err: status.Error(codes.PermissionDenied, "no identity issued")})
	silent := startWorkloadAPI(t, &fakeWorkloadAPI{fx: fx})

	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "denied", args: []string{"svid", "fetch", "x509", "--socket-path", denied},
			wantErr: "Error: fetch X509-SVIDs: no identity issued (PermissionDenied)\n"},
		{name: "timeout", args: []string{"--timeout", "100ms", "svid", "fetch", "x509", "--socket-path", silent},
			wantErr: "(DeadlineExceeded)\n"},
		{name: "no agent", args: []string{"svid", "fetch", "x509", "--socket-path", silent + ".missing"},
			wantErr: "(Unavailable)\n"},
		{name: "unknown JWT identity", args: []string{"svid", "fetch", "jwt", "--socket-path", denied, "--audience", "a", "--spiffe-id", "spiffe://example.org/other"},
			wantErr: "Error: fetch JWT-SVIDs: no identity issued (PermissionDenied)\n"},
		{name: "no audience", args: []string{"svid", "fetch", "jwt", "--socket-path", denied},
			wantErr: "Error: --audience is required\nRun 'tallyctl svid fetch jwt --help' for usage.\n"},
		{name: "bad SPIFFE ID", args: []string{"svid", "fetch", "jwt", "--socket-path", denied, "--audience", "a", "--spiffe-id", "web"},
			wantErr: `Error: --spiffe-id "web": `},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := runCLI(t, "", "", tt.args...)
			require.Equal(t, 1, res.code)
			require.Empty(t, res.stdout)
			require.Contains(t, res.stderr, tt.wantErr)
		})
	}
}

func TestSVIDFetchJWT(t *testing.T) {
	fx, socket := startDefaultWorkloadAPI(t)
	expires := fx.jwtExpiry.UTC().Format(time.RFC3339)

	t.Run("text", func(t *testing.T) {
		res := runCLI(t, "", "", "svid", "fetch", "jwt", "--socket-path", socket, "--audience", "api", "--audience", "db")
		require.Equal(t, 0, res.code, res.stderr)
		var tokens []string
		for _, line := range strings.Split(res.stdout, "\n") {
			if token, ok := strings.CutPrefix(line, "Token:      "); ok {
				tokens = append(tokens, token)
			}
		}
		require.Len(t, tokens, 2, res.stdout)
		require.Equal(t, "SPIFFE ID:  spiffe://example.org/web\n"+
			"Hint:       internal\n"+
			"Expires:    "+expires+"\n"+
			"Token:      "+tokens[0]+"\n"+
			"\n"+
			"SPIFFE ID:  spiffe://example.org/db\n"+
			"Expires:    "+expires+"\n"+
			"Token:      "+tokens[1]+"\n", res.stdout)
		for i, id := range []spiffeid.ID{fx.web.id, fx.db.id} {
			svid, err := jwtsvid.ParseAndValidate(tokens[i], fx.jwtBundle, []string{"db"})
			require.NoError(t, err)
			require.Equal(t, id, svid.ID)
			require.Equal(t, []string{"api", "db"}, svid.Audience)
		}
	})
	t.Run("json", func(t *testing.T) {
		res := runCLI(t, "", "", "svid", "fetch", "jwt", "--socket-path", socket, "--audience", "api", "--spiffe-id", "spiffe://example.org/db", "-o", "json")
		require.Equal(t, 0, res.code, res.stderr)
		var out jwtSVIDsJSON
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
		require.Len(t, out.SVIDs, 1)
		svid, err := jwtsvid.ParseAndValidate(out.SVIDs[0].Token, fx.jwtBundle, []string{"api"})
		require.NoError(t, err)
		require.Equal(t, fx.db.id, svid.ID)
		require.Equal(t, jwtSVIDJSON{SPIFFEID: "spiffe://example.org/db", ExpiresAt: expires, Token: out.SVIDs[0].Token}, out.SVIDs[0])
	})
}

func TestSVIDFetchBundle(t *testing.T) {
	fx, socket := startDefaultWorkloadAPI(t)
	rootPEM := certsPEM([]*x509.Certificate{fx.root})
	fedPEM := certsPEM([]*x509.Certificate{fx.federated})

	res := runCLI(t, "", "", "svid", "fetch", "bundle", "--socket-path", socket)
	require.Equal(t, 0, res.code, res.stderr)
	require.Equal(t, "# example.org\n"+rootPEM+"# federated.example\n"+fedPEM, res.stdout)
	bundle, err := x509bundle.Parse(testTD, []byte(res.stdout))
	require.NoError(t, err, "PEM readers skip the comment lines")
	require.Len(t, bundle.X509Authorities(), 2)

	res = runCLI(t, "", "", "svid", "fetch", "bundle", "--socket-path", socket, "-o", "json")
	require.Equal(t, 0, res.code, res.stderr)
	var out x509BundleSetJSON
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	require.Equal(t, x509BundleSetJSON{Bundles: []x509BundleJSON{
		{TrustDomain: "example.org", Bundle: rootPEM},
		{TrustDomain: "federated.example", Bundle: fedPEM},
	}}, out)
}

func TestSVIDValidate(t *testing.T) {
	fx, socket := startDefaultWorkloadAPI(t)
	token, err := fx.signJWT(fx.web.id, []string{"api"}, nil)
	require.NoError(t, err)
	claims := fmt.Sprintf(`{"aud":"api","exp":%d,"iat":%d,"sub":"spiffe://example.org/web"}`, fx.jwtExpiry.Unix(), fx.jwtIssued.Unix())

	t.Run("text", func(t *testing.T) {
		res := runCLI(t, "", "", "svid", "validate", "--socket-path", socket, "--audience", "api", "--svid", token)
		require.Equal(t, 0, res.code, res.stderr)
		require.Equal(t, "SVID is valid.\nSPIFFE ID:  spiffe://example.org/web\nClaims:     "+claims+"\n", res.stdout)
	})
	t.Run("json from stdin", func(t *testing.T) {
		res := runCLI(t, "", token+"\n", "svid", "validate", "--socket-path", socket, "--audience", "api", "--svid", "-", "-o", "json")
		require.Equal(t, 0, res.code, res.stderr)
		require.JSONEq(t, `{"spiffe_id": "spiffe://example.org/web", "claims": `+claims+`}`, res.stdout)
	})

	forged, err := fx.signJWT(fx.web.id, []string{"api"}, newTestKey(t))
	require.NoError(t, err)
	tests := []struct {
		name, stdin string
		args        []string
		wantErr     string
	}{
		{name: "wrong audience", args: []string{"--audience", "other", "--svid", token},
			wantErr: "Error: validate JWT-SVID: jwtsvid: expected audience in [\"other\"] (audience=[\"api\"]) (InvalidArgument)\n"},
		{name: "forged", args: []string{"--audience", "api", "--svid", forged},
			wantErr: "Error: validate JWT-SVID: jwtsvid: unable to get claims from token: "},
		{name: "not a token", args: []string{"--audience", "api", "--svid", "nope"},
			wantErr: "Error: validate JWT-SVID: jwtsvid: unable to parse JWT token (InvalidArgument)\n"},
		{name: "empty stdin", stdin: "\n", args: []string{"--audience", "api", "--svid", "-"},
			wantErr: "Error: read token from stdin: it is empty\n"},
		{name: "no audience", args: []string{"--svid", token},
			wantErr: "Error: --audience is required\n"},
		{name: "no token", args: []string{"--audience", "api"},
			wantErr: "Error: --svid is required\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := runCLI(t, "", tt.stdin, append([]string{"svid", "validate", "--socket-path", socket}, tt.args...)...)
			require.Equal(t, 1, res.code)
			require.Empty(t, res.stdout)
			require.Contains(t, res.stderr, tt.wantErr)
		})
	}
}

func TestSVIDWatch(t *testing.T) {
	fx := newWorkloadFixture(t)
	socket := startWorkloadAPI(t, &fakeWorkloadAPI{fx: fx, x509Updates: []*workload.X509SVIDResponse{
		fx.x509Response(fx.web, fx.db),
		fx.x509Response(fx.webRenewed, fx.db),
	}})

	t.Run("text", func(t *testing.T) {
		lines := runWatch(t, "svid", "watch", "--socket-path", socket)
		require.Equal(t, []string{
			"X509-SVIDs: spiffe://example.org/web (expires 2023-11-14T23:13:20Z), spiffe://example.org/db (expires 2023-11-14T22:43:20Z); bundles: example.org, federated.example",
			"X509-SVIDs: spiffe://example.org/web (expires 2023-11-15T00:13:20Z), spiffe://example.org/db (expires 2023-11-14T22:43:20Z); bundles: example.org, federated.example",
		}, lines)
	})
	t.Run("json", func(t *testing.T) {
		lines := runWatch(t, "svid", "watch", "--socket-path", socket, "-o", "json")
		require.Len(t, lines, 2)
		for i, expires := range []string{"2023-11-14T23:13:20Z", "2023-11-15T00:13:20Z"} {
			require.JSONEq(t, `{
				"svids": [
					{"spiffe_id": "spiffe://example.org/web", "hint": "internal", "expires_at": "`+expires+`"},
					{"spiffe_id": "spiffe://example.org/db", "hint": "", "expires_at": "2023-11-14T22:43:20Z"}
				],
				"trust_domains": ["example.org", "federated.example"]
			}`, lines[i])
		}
	})
}

func TestSVIDWatchRefused(t *testing.T) {
	fx := newWorkloadFixture(t)
	socket := startWorkloadAPI(t, &fakeWorkloadAPI{fx: fx, x509Err: status.Error(codes.InvalidArgument, "bad request")})

	res := runCLI(t, "", "", "svid", "watch", "--socket-path", socket)
	require.Equal(t, 1, res.code)
	require.Empty(t, res.stdout)
	require.Equal(t, "Error: watch X509-SVIDs: bad request (InvalidArgument)\n", res.stderr)
}

// TestSVIDWatchRetries checks that watch warns while the agent is away and
// still ends cleanly when interrupted.
func TestSVIDWatchRetries(t *testing.T) {
	_, socket := startDefaultWorkloadAPI(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var stdout bytes.Buffer
	stderr := &lineWriter{lines: make(chan struct{}, 16)}
	root := NewRootCommand()
	root.SetOut(&stdout)
	root.SetErr(stderr)
	root.SetArgs([]string{"svid", "watch", "--socket-path", socket + ".missing"})
	done := make(chan int, 1)
	go func() { done <- Execute(ctx, root) }()

	select {
	case <-stderr.lines:
	case code := <-done:
		t.Fatalf("tallyctl exited %d before warning; stderr %q", code, stderr.String())
	}
	cancel()
	require.Equal(t, 0, <-done, stderr.String())
	require.Empty(t, stdout.String())
	require.True(t, strings.HasPrefix(stderr.String(), "Warning: watch X509-SVIDs: connection error: "), stderr.String())
	require.Contains(t, stderr.String(), "(Unavailable)\n")
}

// runWatch runs tallyctl with args until it has printed two lines, then
// cancels its context, and returns the lines. It fails the test unless
// tallyctl then exits 0 with nothing on stderr.
func runWatch(t *testing.T, args ...string) []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	stdout := &lineWriter{lines: make(chan struct{}, 16)}
	var stderr bytes.Buffer
	root := NewRootCommand()
	root.SetIn(strings.NewReader(""))
	root.SetOut(stdout)
	root.SetErr(&stderr)
	root.SetArgs(args)
	done := make(chan int, 1)
	go func() { done <- Execute(ctx, root) }()

	for range 2 {
		select {
		case <-stdout.lines:
		case code := <-done:
			t.Fatalf("tallyctl exited %d before printing two lines; stdout %q, stderr %q", code, stdout.String(), stderr.String())
		}
	}
	cancel()
	code := <-done
	require.Equal(t, 0, code, stderr.String())
	require.Empty(t, stderr.String())
	return strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n")
}

// lineWriter is an io.Writer safe for concurrent use that signals on lines
// each newline written (dropping signals beyond its capacity).
type lineWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines chan struct{}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	for range bytes.Count(p[:n], []byte("\n")) {
		select {
		case w.lines <- struct{}{}:
		default:
		}
	}
	return n, err
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
