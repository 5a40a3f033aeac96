#!/usr/bin/env bash
# Lints docs/openapi.yaml: `swagger-cli validate` (OpenAPI 3.0 schema and
# $refs) from npm, installed once into a cache directory, then
# scripts/check_openapi_ids.py (every operation has a unique operationId).
#   scripts/lint-openapi.sh                 # cache in build/npm-tools
#   SIGNET_NPM_CACHE=/some/dir scripts/lint-openapi.sh
set -euo pipefail
cd "$(dirname "$0")/.."
spec=docs/openapi.yaml
tools=${SIGNET_NPM_CACHE:-$PWD/build/npm-tools}
version=4.0.4
cli=$tools/node_modules/.bin/swagger-cli
if ! command -v npm >/dev/null; then
  echo "lint-openapi: npm is missing (scripts/deps.sh installs it)" >&2
  exit 1
fi
if [ ! -x "$cli" ]; then
  mkdir -p "$tools"
  echo "lint-openapi: installing @apidevtools/swagger-cli@$version into $tools" >&2
  npm install --prefix "$tools" --no-audit --no-fund --loglevel=error \
    "@apidevtools/swagger-cli@$version" >&2
fi
"$cli" validate "$spec"
/usr/bin/python3 scripts/check_openapi_ids.py "$spec"
