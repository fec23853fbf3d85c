#!/usr/bin/env bash
# The test command (README, CI): set up, lint, then run the tests. Extra arguments go to pytest,
# e.g. `bash tests/run.sh -m "not e2e"` for the fast tests alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
bash tests/lint.sh
exec .venv/bin/python -m pytest -q "$@"
