#!/usr/bin/env bash
# The one lint script: ruff, ruff format --check, mypy --strict on the package, the tests and the
# benchmarks. CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
# and the build's own Python (share/manpages.py, debian/check-vendored.py: run by debian/rules)
build_py=(share/manpages.py debian/check-vendored.py)
"$py" -m ruff check avtool tests bench "${build_py[@]}"
"$py" -m ruff format --check avtool tests bench "${build_py[@]}"
"$py" -m mypy --strict avtool tests bench "${build_py[@]}"
