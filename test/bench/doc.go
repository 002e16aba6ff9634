// Package bench measures the real tally-server process. Every figure is
// printed beside a baseline measured in the same run (the raw crypto floor),
// because this machine is shared and noisy. Run with `make bench`.
package bench
