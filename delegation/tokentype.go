package delegation

// RFC 8693 token type URIs, as Tally's token service takes and issues them.
// They equal those of Tally's server package ca/exchange, which this package
// does not import so that services do not link the server's dependencies.
const (
	// TokenTypeJWT is a JWT-SVID carrying a user (requested or sent on).
	TokenTypeJWT = "urn:ietf:params:oauth:token-type:jwt"
	// TokenTypeTxnToken is a Txn-Token.
	TokenTypeTxnToken = "urn:ietf:params:oauth:token-type:txn_token"
	// TokenTypeIDToken is a user's OIDC ID token.
	TokenTypeIDToken = "urn:ietf:params:oauth:token-type:id_token"
	// TokenTypeAccessToken is a user's OAuth access token.
	TokenTypeAccessToken = "urn:ietf:params:oauth:token-type:access_token"
)

// TxnTokenHeader is the HTTP header that carries a Txn-Token.
const TxnTokenHeader = "Txn-Token"

// txnTokenTyp is the JOSE header typ of a Txn-Token.
const txnTokenTyp = "txntoken+jwt"
