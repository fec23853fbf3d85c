#!/usr/bin/env bash
# Install what the test suite needs, idempotently: Debian packages (clamd, Courier, shells for the
# completion checks) and a venv in .venv with avtool (editable) and its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(clamav-daemon clamav clamdscan clamav-testfiles courier-mta maildrop sudo
          python3-venv zip zsh fish)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    echo "tests/setup.sh: missing Debian packages: ${missing[*]} (run as root to install)" >&2
    exit 1
  fi
  # courier-mta's postinst may start esmtpd on port 25: keep services down while installing.
  created_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
  [[ -n "$created_policy" ]] && rm -f /usr/sbin/policy-rc.d
fi

if [[ ! -x .venv/bin/python ]]; then
  /usr/bin/python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
