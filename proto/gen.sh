#!/usr/bin/env bash
# Regenerates the Go code for proto/tally/v1 (needs protoc, protoc-gen-go, protoc-gen-go-grpc).
set -euo pipefail
cd "$(dirname "$0")"
protoc -I . --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative tally/v1/*.proto
