#!/usr/bin/env bash
# Install avtool on Debian 12 as root: clamd, avtool in /opt/avtool, its config, and check it all.
#   bash share/install.sh            install (idempotent), start clamd, run `avtool config --check`
# Environment: AVTOOL_PREFIX (default /opt/avtool).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${AVTOOL_PREFIX:-/opt/avtool}
conf_dir=/etc/courier/filters
say() { printf 'avtool-install: %s\n' "$*"; }
loud() { printf '\n!!! avtool-install: %s\n\n' "$*" >&2; }

[[ $(id -u) == 0 ]] || { echo "avtool-install: run me as root" >&2; exit 2; }

install_packages() {
  local wanted=(clamav-daemon clamav-freshclam clamdscan python3-venv) missing=() p
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
}

install_avtool() {
  # Debian's python3, not a pyenv under /root: user courier must be able to run it.
  [[ -x $prefix/bin/python ]] || /usr/bin/python3 -m venv "$prefix"
  say "installing avtool from $here into $prefix"
  "$prefix/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$here"
  ln -sf "$prefix/bin/avtool" /usr/local/bin/avtool
  chmod -R a+rX "$prefix"
}

has_database() { compgen -G '/var/lib/clamav/*.c[lv]d' >/dev/null || compgen -G '/var/lib/clamav/*.[hn]db' >/dev/null; }

ensure_database() {
  has_database && return 0
  say "no ClamAV database yet: running freshclam"
  if timeout 300 freshclam --quiet 2>/dev/null && has_database; then return 0; fi
  loud "freshclam could not download the ClamAV database (offline?). Using avtool's TEST
    signatures (EICAR and the ClamAV test file only): this clamd will NOT detect real viruses.
    Run freshclam once the network is reachable; freshclam's own service keeps it current."
  install -o clamav -g clamav -m 644 "$here"/share/testsigs/*.[hn]db /var/lib/clamav/
}

start_clamd() {
  if clamdscan --ping 1 >/dev/null 2>&1; then return 0; fi
  say "starting clamd"
  if [[ -d /run/systemd/system ]]; then
    systemctl restart clamav-daemon
  else
    install -d -o clamav -g clamav /run/clamav
    clamd   # daemonizes itself (Debian's clamd.conf: Foreground false)
  fi
  clamdscan --ping 30:1 >/dev/null || { echo "avtool-install: clamd did not answer" >&2; exit 3; }
}

write_config() {
  [[ -d $conf_dir ]] || return 0   # Courier not installed: defaults only
  [[ -e $conf_dir/avtool.conf ]] && { say "keeping $conf_dir/avtool.conf"; return 0; }
  install -m 640 -g "$(stat -c %g "$conf_dir")" "$here/share/avtool.conf" "$conf_dir/avtool.conf"
  say "wrote $conf_dir/avtool.conf"
}

install_packages
install_avtool
ensure_database
start_clamd
write_config
say "checking: avtool config --check"
exec /usr/local/bin/avtool config --check
