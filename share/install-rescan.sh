#!/usr/bin/env bash
# Install the hourly retro-scan job (share/rescan-job.sh: `avtool rescan --if-changed --notify`
# when clamd's signatures changed), as root, the way the Debian package ships it; every step can
# be run again. share/install.sh runs this.
#
#   /usr/local/lib/avtool/rescan-job    the job, root 0755
#   /etc/cron.d/avtool-rescan           hourly, unless systemd runs (the line checks each time)
#   /etc/systemd/system/avtool-rescan.{service,timer}
#                                       where systemd runs: the timer enabled and started
#
# Environment (tests): AVTOOL_ROOT, a directory to install below instead of /.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${AVTOOL_ROOT:-}
lib=/usr/local/lib/avtool
say() { printf 'avtool-install-rescan: %s\n' "$*"; }

[[ $(id -u) == 0 || -n $root ]] || { say "run me as root" >&2; exit 1; }
# The package's files with a checkout install's paths (debian/rules does the reverse).
local_paths() { sed -e "s|/usr/lib/avtool/|$lib/|g" "$1"; }
put() {  # put MODE DEST: stdin to DEST atomically
  local dest=$root$2
  install -d -m 0755 "$(dirname "$dest")"
  cat > "$dest.new" && chmod "$1" "$dest.new" && mv -f "$dest.new" "$dest"
}

put 0755 "$lib/rescan-job" < "$here/share/rescan-job.sh"
local_paths "$here/debian/avtool.avtool-rescan.cron.d" | put 0644 /etc/cron.d/avtool-rescan
say "installed $lib/rescan-job and /etc/cron.d/avtool-rescan"
if [[ -z $root && -d /run/systemd/system ]]; then
  for unit in service timer; do
    local_paths "$here/debian/avtool.avtool-rescan.$unit" |
      put 0644 "/etc/systemd/system/avtool-rescan.$unit"
  done
  systemctl daemon-reload
  systemctl enable --now avtool-rescan.timer
  say "enabled avtool-rescan.timer"
fi
