#!/usr/bin/env bash
# Both suites, tables on stdout and rows in benchmarks/results/<suite>.json.
# Usage: benchmarks/run.sh [extra options for python benchmarks/bench.py, e.g. --device cuda --threads 1]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p benchmarks/results
for suite in sinusoid omniglot; do
  PYTHONPATH=src "$PY" benchmarks/bench.py --suite "$suite" --json "benchmarks/results/$suite.json" "$@"
done
