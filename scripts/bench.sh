#!/usr/bin/env bash
# make bench: every benchmark, each figure beside a baseline measured in the
# same run. Results also go to .cache/bench/<timestamp>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.cache/bench/$(date -u +%Y%m%dT%H%M%SZ).txt
mkdir -p .cache/bench
export TALLY_BENCH_OUT=$PWD/$OUT
{
  echo "# Tally benchmarks $(date -u +%FT%TZ), $(nproc) cores, $(go version | cut -d' ' -f3)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT"

# 1. The authority's signing path vs the raw crypto floor (in-process).
raw=$(go test ./ca/ -run '^$' -bench . -benchtime "${BENCHTIME:-3s}" -count 1)
echo "$raw" >> "$OUT"
echo "$raw" | awk '
  /^Benchmark/ { split($1, p, "/"); sub(/-[0-9]+$/, "", p[2]); ops[p[1] "/" p[2]] = $5 }
  END {
    printf "\n## CA signing (ca.Authority) vs raw crypto floor, same run\n\n"
    printf "%-28s %12s %12s %8s\n", "path", "Tally ops/s", "floor ops/s", "ratio"
    split("serial parallel", modes, " ")
    for (i = 1; i <= 2; i++) {
      m = modes[i]
      printf "%-28s %12.0f %12.0f %8.2f\n", "X509-SVID from CSR, " m, ops["BenchmarkSignX509SVID/" m], ops["BenchmarkFloorX509/" m], ops["BenchmarkSignX509SVID/" m] / ops["BenchmarkFloorX509/" m]
      printf "%-28s %12.0f %12.0f %8.2f\n", "JWT-SVID, " m, ops["BenchmarkSignJWTSVID/" m], ops["BenchmarkFloorJWT/" m], ops["BenchmarkSignJWTSVID/" m] / ops["BenchmarkFloorJWT/" m]
    }
  }' | tee -a "$OUT"

# 2. The store alone.
go test ./ca/store/badgerstore/ -run '^$' -bench . -benchtime 1x -count 1 | grep -E '^Benchmark' | tee -a "$OUT"

# 3. The rotation dashboard's parts: records at a million issuances, the
# fleet's overview of 10,000 workloads, the page in Chromium, the exchange.
go test ./ca/records/ ./ca/fleet/ ./ca/dashboard/ ./ca/exchange/ -run '^$' -bench . -benchtime 2s -count 1 | grep -E '^(Benchmark|    )' | tee -a "$OUT"

# 4. The real server process: issuance over the Node API, entries, RSS.
go test ./test/bench/ -run '^$' -bench . -benchtime 1x -count 1 -timeout 30m | grep -vE '^(goos|goarch|pkg|cpu|PASS|ok)' 
echo "results: $OUT"
