#!/usr/bin/env bash
# Install the hourly retro-scan job (share/rescan-job.sh: `avtool rescan --if-changed --notify`
# when clamd's signatures changed), as root, the way the Debian package ships it; every step can
# be run again. share/install.sh runs this.
#
#   /usr/local/lib/avtool/rescan-job    the job, root 0755
#   /etc/cron.d/avtool-local-rescan     hourly, unless systemd runs (the line checks each time)
#   /etc/systemd/system/avtool-local-rescan.{service,timer}
#                                       where systemd runs: the timer enabled and started
#
# Named avtool-local-*, not the package's avtool-rescan: /etc/cron.d/avtool-rescan is the Debian
# package's conffile, and a file of ours under that name stops its install at dpkg's conffile
# prompt. Both step aside once the package's /usr/lib/avtool/rescan-job is installed.
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
put 0644 /etc/cron.d/avtool-local-rescan <<EOF
# avtool (share/install-rescan.sh): rescan delivered mail when clamd's signatures changed
# ($lib/rescan-job). It prints, and cron mails root, only when the rescan fails; what it finds
# goes to the postmaster. Where systemd runs, avtool-local-rescan.timer does it; the Debian
# package's job replaces it.
MAILTO=root
17 * * * * root [ -d /run/systemd/system ] || [ -x /usr/lib/avtool/rescan-job ] || [ ! -x $lib/rescan-job ] || $lib/rescan-job
EOF
say "installed $lib/rescan-job and /etc/cron.d/avtool-local-rescan"
if [[ -z $root && -d /run/systemd/system ]]; then
  for unit in service timer; do
    local_paths "$here/debian/avtool.avtool-rescan.$unit" |
      sed -e 's|^\[Unit\]$|[Unit]\nConditionPathExists=!/usr/lib/avtool/rescan-job|' |
      put 0644 "/etc/systemd/system/avtool-local-rescan.$unit"
  done
  systemctl daemon-reload
  systemctl enable --now avtool-local-rescan.timer
  say "enabled avtool-local-rescan.timer"
fi
