#!/usr/bin/env bash
# Install avtool into Courier on Debian 12, as root; every step can be run again.
#
#   bash share/install.sh            install clamd, Courier (if missing) and avtool, enable the
#                                    filter, check everything, then show one clean mail delivered
#                                    and one EICAR mail rejected
#   bash share/install.sh --no-smoke the same without the two test mails
#   bash share/install.sh --no-clamd-config
#                                    leave clamd.conf alone (another program shares this clamd);
#                                    otherwise share/clamd-config.sh turns on clamd's Alert*
#                                    settings, so that what clamd cannot check is not called clean
#
# Environment: AVTOOL_PREFIX (/opt/avtool), AVTOOL_SMOKE_DOMAIN (a dotted local domain for the
# test mails; default: the first dotted one in /etc/courier/locals, else avtool-smoke.test),
# AVTOOL_CLAMD_CONF (the clamd.conf to edit: /etc/clamav/clamd.conf).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${AVTOOL_PREFIX:-/opt/avtool}
etc=/etc/courier
conf=$etc/filters/avtool.conf
wrapper=/usr/lib/courier/filters/avtool
socket=/var/lib/courier/allfilters/avtool
clamd_conf=${AVTOOL_CLAMD_CONF:-/etc/clamav/clamd.conf}
smoke=1 clamd_config=1 clamd_changed=""
for arg in "$@"; do
  case $arg in
    --no-smoke) smoke="" ;;
    --no-clamd-config) clamd_config="" ;;
    *) printf 'avtool-install: unknown option %s (--no-smoke, --no-clamd-config)\n' "$arg" >&2; exit 2 ;;
  esac
done
say() { printf 'avtool-install: %s\n' "$*"; }
loud() { printf '\n!!! avtool-install: %s\n\n' "$*" >&2; }
die() { printf 'avtool-install: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run me as root"

# A pid runs if /proc says so and it is not a zombie (a zombie passes kill -0).
pid_alive() { [[ -r /proc/$1/stat ]] && ! grep -qE '^[0-9]+ \(.*\) [ZX] ' "/proc/$1/stat"; }
pidfile_alive() { [[ -r $1 ]] && pid_alive "$(head -n1 "$1" | tr -dc 0-9)"; }
wait_until() { local end=$((SECONDS + $1)); shift; until "$@"; do ((SECONDS < end)) || return 1; sleep 0.1; done; }

install_packages() {
  local wanted=(clamav-daemon clamav-freshclam clamdscan python3-venv courier-mta) missing=() p
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
  # offline, freshclam retries for 40 s before it gives up: ask DNS first
  if getent hosts database.clamav.net >/dev/null 2>&1 &&
     timeout 300 freshclam --quiet 2>/dev/null && has_database; then return 0; fi
  loud "freshclam could not download the ClamAV database (offline?). Using avtool's TEST
    signatures (EICAR and the ClamAV test file only): this clamd will NOT detect real viruses.
    Run freshclam once the network is reachable; freshclam's own service keeps it current."
  install -o clamav -g clamav -m 644 "$here"/share/testsigs/*.[hn]db /var/lib/clamav/
}

configure_clamd() {
  if [[ -z $clamd_config ]]; then
    say "--no-clamd-config: not touching $clamd_conf. Unless its AlertEncrypted and"
    say "  AlertExceedsMax are on, clamd answers OK for encrypted archives and for what it skips"
    say "  at its limits, and such mail is delivered as clean (avtool config --check warns)"
    return 0
  fi
  local rc=0
  bash "$here/share/clamd-config.sh" "$clamd_conf" || rc=$?
  case $rc in
    0) ;;
    10) clamd_changed=1 ;;
    *) die "could not configure $clamd_conf (run with --no-clamd-config to leave it alone)" ;;
  esac
  say "with avtool's defaults (policy.unchecked = \"pass\"), encrypted archives and documents,"
  say "  and what clamd skips at its limits (MaxRecursion, MaxFileSize, MaxScanSize), are"
  say "  delivered with the field X-Virus-Status: Unchecked (...), not refused; set"
  say "  policy.unchecked = \"reject\" (or \"quarantine\") in $conf to refuse them"
}

stop_clamd() {
  # Debian's clamd.conf sets no PidFile: ask clamd itself (SHUTDOWN, clamd(8)) and wait
  "$prefix/bin/python" - "$1" <<'PY' || true
import socket, sys
with socket.socket(socket.AF_UNIX) as s:
    s.settimeout(10)
    s.connect(sys.argv[1])
    s.sendall(b"zSHUTDOWN\0")
PY
  wait_until 30 bash -c '! clamdscan --ping 1 >/dev/null 2>&1' || die "clamd did not stop"
}

start_clamd() {
  if clamdscan --ping 1 >/dev/null 2>&1; then
    [[ -n $clamd_changed ]] || return 0
    if [[ $clamd_conf != /etc/clamav/clamd.conf ]]; then
      say "restart the clamd that reads $clamd_conf to apply its new settings"
      return 0
    fi
    # clamd reads clamd.conf at start only (RELOAD reloads the signatures, not the settings)
    say "restarting clamd for the new settings (programs sharing it wait a few seconds)"
    if [[ -d /run/systemd/system ]]; then
      systemctl restart clamav-daemon
      clamdscan --ping 30:1 >/dev/null || die "clamd did not answer"
      return 0
    fi
    local sock; sock=$(awk '$1 == "LocalSocket" { v = $2 } END { print v }' "$clamd_conf")
    [[ -n $sock ]] || die "no LocalSocket in $clamd_conf: restart clamd yourself"
    stop_clamd "$sock"
  fi
  say "starting clamd"
  if [[ -d /run/systemd/system ]]; then
    systemctl restart clamav-daemon
  else
    install -d -o clamav -g clamav /run/clamav
    clamd   # daemonizes itself (Debian's clamd.conf: Foreground false)
  fi
  clamdscan --ping 30:1 >/dev/null || die "clamd did not answer"
}

install_filter() {
  if [[ ! -e $conf ]]; then
    install -m 640 -o root -g courier "$here/share/avtool.conf" "$conf"
    say "wrote $conf (every key commented out: the defaults)"
  fi
  # /var/lib/avtool belongs to courier once made: root never chowns or chmods through it
  # (courier could have put a link to /etc there), it only makes it when missing, and the
  # quarantine in it while it is still root's, or as courier (as debian/avtool.postinst does)
  if [[ ! -e /var/lib/avtool && ! -L /var/lib/avtool ]]; then
    mkdir -m 750 /var/lib/avtool
    mkdir -m 700 /var/lib/avtool/quarantine
    chown courier:courier /var/lib/avtool/quarantine /var/lib/avtool
  elif [[ ! -e /var/lib/avtool/quarantine && ! -L /var/lib/avtool/quarantine ]]; then
    runuser -u courier -- mkdir -m 700 /var/lib/avtool/quarantine
  fi
  sed "s|@PREFIX@|$prefix|" "$here/share/courier-filter.sh" > "$wrapper.new"
  chmod 755 "$wrapper.new" && mv "$wrapper.new" "$wrapper"
  say "installed the filter $wrapper"
}

start_courier() {
  # Debian's package ships no .dat files: without them 127.0.0.1 is no relay client and the
  # local domains are not accepted (docs/notes/courier.md §1)
  [[ -e $etc/smtpaccess.dat ]] || makesmtpaccess
  [[ -e $etc/esmtpacceptmailfor.dat ]] || makeacceptmailfor
  [[ -e $etc/aliases.dat ]] || makealiases
  [[ -e $etc/hosteddomains.dat ]] || makehosteddomains
  if [[ -d /run/systemd/system ]]; then
    systemctl start courier-authdaemon courierfilter courier-mta
    return 0
  fi
  pidfile_alive /run/courier/authdaemon/pid || /usr/sbin/authdaemond start
  pidfile_alive /run/courier/courierfilter.pid || /usr/sbin/courierfilter start
  [[ -n $(pgrep -x courierd) ]] || /usr/sbin/courier start
  pidfile_alive /run/courier/esmtpd.pid || { rm -f /run/courier/esmtpd.pid; /usr/sbin/esmtpd start; }
}

enable_filter() {
  [[ -S $socket ]] && [[ -L /etc/courier/filters/active/avtool ]] && {
    # a running filter keeps its old code: restart it so that the new install serves
    filterctl stop avtool; wait_until 15 test ! -S "$socket" || true
  }
  filterctl start avtool
  # filterctl's HUP can be lost while courierfilter waits for a filter (docs/notes/courier.md §7)
  if ! wait_until 10 test -S "$socket"; then
    say "no socket yet: courierfilter restart"
    /usr/sbin/courierfilter restart 2>/dev/null || { /usr/sbin/courierfilter stop; sleep 1; /usr/sbin/courierfilter start; }
    wait_until 15 test -S "$socket" || die "the filter socket $socket did not appear"
  fi
  say "filter enabled: $socket"
}

smoke_test() {
  local domain=${AVTOOL_SMOKE_DOMAIN:-} user=avtoolsmoke
  [[ -n $domain ]] || domain=$(grep -m1 '\.' $etc/locals 2>/dev/null || true)
  if [[ -z $domain ]]; then
    domain=avtool-smoke.test
    echo "$domain" >> $etc/locals   # Courier wants a dot in the recipient's domain
    makeacceptmailfor
  fi
  if ! id "$user" >/dev/null 2>&1; then
    useradd -m -s /usr/sbin/nologin "$user"
    say "created the local user $user for the test mails (userdel -r $user removes it)"
  fi
  local home; home=$(getent passwd "$user" | cut -d: -f6)
  [[ -d $home/Maildir/new ]] || { maildirmake "$home/Maildir"; chown -R "$user:" "$home/Maildir"; }
  local hostport  # esmtpd's own settings: the file is sourced by esmtpd
  hostport=$(set +u; . $etc/esmtpd; port=${PORT:-25}; [[ $port == smtp ]] && port=25
             addr=${ADDRESS:-0}; [[ $addr == 0 ]] && addr=127.0.0.1; echo "$addr $port")
  say "sending two test mails to $user@$domain via ${hostport/ /:}"
  "$prefix/bin/python" "$here/share/smoke.py" --to "$user@$domain" --maildir "$home/Maildir" \
    --host "${hostport% *}" --port "${hostport#* }"
}

check_all() {
  say "checking: avtool config --check --daemon"
  local out rc=0 others
  out=$(/usr/local/bin/avtool config --check --daemon 2>&1) || rc=$?
  printf '%s\n' "$out"
  ((rc)) || return 0
  # Offline, ensure_database left clamd with avtool's test signatures: the doctor fails that
  # (rightly), and everything else can still be installed and shown to work.
  others=$(grep '^FAIL' <<<"$out" | grep -vc 'holds test or custom signatures only' || true)
  if [[ $others == 0 ]] && ! compgen -G '/var/lib/clamav/main.c[lv]d' >/dev/null; then
    loud "installed, but clamd has no ClamAV database (the FAIL above): it detects the test
    signatures only, NO real virus. Run freshclam once the network is reachable."
    return 0
  fi
  die "the checks above failed"
}

install_daily_job() {
  # The Debian package's daily job (share/daily-check, run by debian/'s cron file and systemd
  # timer) at this install's paths: expiry of the quarantine, its digest, the doctor. Named
  # avtool-local, not the package's avtool: /etc/cron.d/avtool is the package's conffile (a file
  # of ours there makes its install stop at a conffile prompt), and each steps aside once the
  # package's /usr/lib/avtool/daily-check is installed. The cron line also steps aside where
  # systemd runs, and the timer runs it there.
  local lib=/usr/local/lib/avtool data=/usr/local/share/avtool unit
  install -d -m 755 "$lib" "$data"
  install -m 755 "$here/share/daily-check" "$lib/daily-check"
  # the notice templates (avtool.quarantine.notices.SHIPPED for this install)
  rm -rf "$data/notices.new"
  cp -r "$here/share/notices" "$data/notices.new"
  chmod -R a+rX,go-w "$data/notices.new"
  rm -rf "$data/notices"
  mv "$data/notices.new" "$data/notices"
  cat > /etc/cron.d/avtool-local.new <<EOF
# avtool (share/install.sh): the daily check of the Courier filter, quarantine expiry and digest
# ($lib/daily-check). It prints, and cron mails root, only when a step fails.
# Where systemd runs, avtool-local-daily.timer does it; the Debian package's job replaces it.
MAILTO=root
47 6 * * * root [ -d /run/systemd/system ] || [ -x /usr/lib/avtool/daily-check ] || [ ! -x $lib/daily-check ] || $lib/daily-check
EOF
  chmod 644 /etc/cron.d/avtool-local.new && mv /etc/cron.d/avtool-local.new /etc/cron.d/avtool-local
  if [[ -d /run/systemd/system ]]; then
    for unit in service timer; do
      sed -e "s|/usr/lib/avtool/|$lib/|g" \
        -e 's|^\[Unit\]$|[Unit]\nConditionPathExists=!/usr/lib/avtool/daily-check|' \
        "$here/debian/avtool.avtool-daily.$unit" > "/etc/systemd/system/avtool-local-daily.$unit"
    done
    systemctl daemon-reload
    systemctl enable --now avtool-local-daily.timer
  fi
  say "installed the daily job $lib/daily-check (/etc/cron.d/avtool-local; a systemd timer where systemd runs)"
}

install_packages
install_avtool
ensure_database
configure_clamd
start_clamd
install_filter
bash "$here/share/install-updates.sh"   # the update script for run-get-ides (no user yet)
install_daily_job
start_courier
enable_filter
check_all
bash "$here/share/install-rescan.sh"   # the hourly rescan of delivered mail (new signatures)
if [[ -n $smoke ]]; then smoke_test; fi
say "done: every message Courier receives by SMTP is now scanned by clamd"
