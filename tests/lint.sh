#!/usr/bin/env bash
# The one lint script: ruff, ruff format --check, mypy --strict on the package, the tests and the
# benchmarks. CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
"$py" -m ruff check avtool tests bench
"$py" -m ruff format --check avtool tests bench
"$py" -m mypy --strict avtool tests bench
