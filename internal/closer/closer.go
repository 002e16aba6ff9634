// Package closer releases what a build step opened, in reverse order.
package closer

// Stack holds the close functions of what has been opened so far. The zero
// value is ready. Not safe for concurrent use: the one build step that opens
// things owns it.
type Stack struct {
	fns []func() error
}

// Add records f to be called by Close.
func (s *Stack) Add(f func() error) { s.fns = append(s.fns, f) }

// Close calls every recorded function, last added first, once, and
// forgets them. Errors are dropped: Close runs on a path that already
// failed, or at shutdown, where nothing more can be done about them.
func (s *Stack) Close() {
	for i := len(s.fns) - 1; i >= 0; i-- {
		_ = s.fns[i]()
	}
	s.fns = nil
}
