package idp

import "errors"

// ErrInvalidCredentials is returned by Login when the provider refused the
// username or the password.
var ErrInvalidCredentials = errors.New("invalid username or password")
