package app

import (
	"errors"
	"slices"
	"sync"
)

// Errors of Store.Share, for errors.Is.
var (
	ErrNoTodo   = errors.New("no such todo")
	ErrNotOwner = errors.New("not the owner")
)

// Store is todos's in-memory store of todos. It is safe for concurrent use.
type Store struct {
	mu    sync.Mutex
	todos []Todo
}

// NewStore returns a store holding todos.
func NewStore(todos []Todo) *Store {
	return &Store{todos: slices.Clone(todos)}
}

// SeedTodos are the demo's todos: Alice's two and Bob's one, shared with no
// one yet.
func SeedTodos() []Todo {
	return []Todo{
		{ID: 1, Title: "buy milk", Owner: "alice@example.com", DueToday: true},
		{ID: 2, Title: "plan the trip", Owner: "alice@example.com"},
		{ID: 3, Title: "water the plants", Owner: "bob@example.com", DueToday: true},
	}
}

// Due returns the todos due today, everyone's.
func (s *Store) Due() []Todo {
	return s.filter(func(t Todo) bool { return t.DueToday })
}

// SharedWith returns the todos that their owners shared with the user
// whose email is user.
func (s *Store) SharedWith(user string) []Todo {
	return s.filter(func(t Todo) bool { return slices.Contains(t.SharedWith, user) })
}

// Share shares the todo id, which must be owner's, with the user whose
// email is with, and returns it. The error is ErrNoTodo or ErrNotOwner.
func (s *Store) Share(id int, owner, with string) (Todo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.todos, func(t Todo) bool { return t.ID == id })
	switch {
	case i < 0:
		return Todo{}, ErrNoTodo
	case s.todos[i].Owner != owner:
		return Todo{}, ErrNotOwner
	}
	t := &s.todos[i]
	if !slices.Contains(t.SharedWith, with) {
		t.SharedWith = append(t.SharedWith, with)
	}
	return clone(*t), nil
}

func (s *Store) filter(keep func(Todo) bool) []Todo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []Todo{}
	for _, t := range s.todos {
		if keep(t) {
			out = append(out, clone(t))
		}
	}
	return out
}

// clone copies t so that its SharedWith is not the store's.
func clone(t Todo) Todo {
	t.SharedWith = slices.Clone(t.SharedWith)
	return t
}
