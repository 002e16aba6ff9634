package idp

import (
	"crypto/subtle"
	"errors"
	"fmt"
)

// User is an account that can sign in at the provider. Its ID is the sub of
// its tokens; it signs in with its ID or its Email as the username.
type User struct {
	ID       string
	Email    string
	Password string
	// Roles is the roles claim of its tokens.
	Roles []string
}

// DefaultUsers returns the demo's two users: alice (password
// "alice-password") and bob ("bob-password"), both with the role "user".
func DefaultUsers() []User {
	return []User{
		{ID: "alice", Email: "alice@example.com", Password: "alice-password", Roles: []string{"user"}},
		{ID: "bob", Email: "bob@example.com", Password: "bob-password", Roles: []string{"user"}},
	}
}

// directory holds the users by ID and by username. It is read-only once
// built, so it is safe for concurrent use.
type directory struct {
	byID       map[string]User
	byUsername map[string]string // ID or email → ID
}

func newDirectory(users []User) (directory, error) {
	d := directory{byID: make(map[string]User), byUsername: make(map[string]string)}
	for i, u := range users {
		if u.ID == "" || u.Email == "" || u.Password == "" {
			return directory{}, fmt.Errorf("idp: users[%d]: id, email and password are required", i)
		}
		for _, name := range []string{u.ID, u.Email} {
			if _, dup := d.byUsername[name]; dup {
				return directory{}, fmt.Errorf("idp: users[%d]: %q names two users", i, name)
			}
			d.byUsername[name] = u.ID
		}
		u.Roles = append([]string{}, u.Roles...) // never null in a token
		d.byID[u.ID] = u
	}
	return d, nil
}

var errUnknownUser = errors.New("idp: unknown user")

// user returns the user with this ID.
func (d directory) user(id string) (User, error) {
	u, ok := d.byID[id]
	if !ok {
		return User{}, fmt.Errorf("%w %q", errUnknownUser, id)
	}
	return u, nil
}

// authenticate returns the user whose ID or email is username, if password
// is theirs.
func (d directory) authenticate(username, password string) (User, error) {
	id, ok := d.byUsername[username]
	if !ok {
		return User{}, ErrInvalidCredentials
	}
	u := d.byID[id]
	if subtle.ConstantTimeCompare([]byte(u.Password), []byte(password)) != 1 {
		return User{}, ErrInvalidCredentials
	}
	return u, nil
}
