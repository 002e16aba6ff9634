#!/usr/bin/env bash
# Copies uPlot, at the version ca/dashboard/web/package-lock.json pins, into
# ca/dashboard/assets/vendor, which is committed and embedded in tally-server:
# the Go build needs no npm and the page loads nothing from elsewhere. The
# page's own HTML, CSS and JavaScript in ca/dashboard/assets are written as
# browsers run them and need no build. Run after changing the uPlot version.
set -euo pipefail
cd "$(dirname "$0")/../../ca/dashboard"
(cd web && npm ci --no-audit --no-fund --silent)
src=web/node_modules/uplot
version=$(node -p "require('./$src/package.json').version")
mkdir -p assets/vendor
cp "$src/dist/uPlot.iife.min.js" "$src/dist/uPlot.min.css" assets/vendor/
cp "$src/LICENSE" assets/vendor/uPlot.LICENSE
echo "$version" >assets/vendor/uPlot.version
echo "uPlot $version copied into ca/dashboard/assets/vendor"
