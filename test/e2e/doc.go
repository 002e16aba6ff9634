// Package e2e tests Tally through its real binaries: tally-server processes
// with real badger stores, real gRPC over TCP+TLS and Unix sockets, and
// tallyctl.
package e2e
