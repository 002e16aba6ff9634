package agentapp

import (
	"math"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
)

func validConfig() Config {
	c := DefaultConfig()
	c.TrustDomain = "example.org"
	c.ServerAddress = "127.0.0.1:8081"
	c.InsecureBootstrap = true
	return c
}

func TestConfigJWTLimits(t *testing.T) {
	def := DefaultConfig()
	require.Equal(t, 1000, def.JWTCacheSize)
	require.Equal(t, 10.0, def.JWTMintRate)
	require.Equal(t, 50, def.JWTMintBurst)
	require.NoError(t, validConfig().Validate())

	for _, tt := range []struct {
		name string
		edit func(*Config)
		key  string
	}{
		{"zero cache", func(c *Config) { c.JWTCacheSize = 0 }, "jwt_cache_size"},
		{"negative cache", func(c *Config) { c.JWTCacheSize = -1 }, "jwt_cache_size"},
		{"zero rate", func(c *Config) { c.JWTMintRate = 0 }, "jwt_mint_rate"},
		{"NaN rate", func(c *Config) { c.JWTMintRate = math.NaN() }, "jwt_mint_rate"},
		{"infinite rate", func(c *Config) { c.JWTMintRate = math.Inf(1) }, "jwt_mint_rate"},
		{"zero burst", func(c *Config) { c.JWTMintBurst = 0 }, "jwt_mint_burst"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.edit(&c)
			err := c.Validate()
			require.Error(t, err)
			require.Contains(t, err.Error(), tt.key)
		})
	}
}

func TestConfigJWTFlags(t *testing.T) {
	c := validConfig()
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	BindFlags(fs, &c)
	require.NoError(t, fs.Parse([]string{"--jwt-cache-size", "7", "--jwt-mint-rate", "0.5", "--jwt-mint-burst", "3"}))
	require.Equal(t, 7, c.JWTCacheSize)
	require.Equal(t, 0.5, c.JWTMintRate)
	require.Equal(t, 3, c.JWTMintBurst)
	require.NoError(t, c.Validate())
}

// TestConfigServerVerificationIsTheDefault: the agent authenticates the
// server unless insecure_bootstrap is set explicitly, and the two ways of
// trusting it exclude each other.
func TestConfigServerVerificationIsTheDefault(t *testing.T) {
	c := validConfig()
	require.False(t, DefaultConfig().InsecureBootstrap)
	c.InsecureBootstrap = false
	require.ErrorContains(t, c.Validate(), "trust_bundle is required")
	c.TrustBundle = "/etc/tally/bundle.pem"
	require.NoError(t, c.Validate())
	c.InsecureBootstrap = true
	require.ErrorContains(t, c.Validate(), "exclude each other")
	c.TrustBundle, c.JoinToken, c.JoinTokenFile = "", "a", "b"
	require.ErrorContains(t, c.Validate(), "join_token and join_token_file exclude each other")
}
