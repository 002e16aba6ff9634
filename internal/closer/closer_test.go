package closer

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestStackClosesInReverseOnce(t *testing.T) {
	var order []int
	var s Stack
	for i := range 3 {
		s.Add(func() error { order = append(order, i); return errors.New("ignored") })
	}
	s.Close()
	s.Close()
	require.Equal(t, []int{2, 1, 0}, order)
}
