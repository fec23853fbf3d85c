#!/bin/sh
# avtool's hourly retro-scan job (/etc/cron.d/avtool-rescan, or avtool-rescan.timer where
# systemd runs; installed by the Debian package and by share/install.sh): when clamd's
# signatures changed since the last rescan, find the delivered mail they now name and report it
# to the postmaster (avtool rescan --if-changed --notify). --if-changed asks clamd for its
# database identity and compares it with the one the rescan state keeps: an unchanged one ends
# the run at once, no mailbox read.
#
# Why a root timer that polls, and not freshclam's OnUpdateExecute: freshclam runs that command
# as its own user, clamav, which must not read mailboxes; letting clamav start a root program
# (a sudo rule, a setuid helper) would hand clamav's compromise root's reach into every mailbox.
# Here nothing passes from clamav to root: root looks at what clamd has loaded, once an hour,
# and get_ides.sh (run-get-ides) rescans at once after the updates it makes itself.
#
# Silent unless the rescan fails (exit 2 or more): then the output, for cron to mail root (or
# the journal to keep, the unit failed). What it finds goes to the postmaster (--notify).
set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin
COLUMNS=200   # a mail, not a terminal
export COLUMNS
AVTOOL=/usr/local/bin/avtool
# Another avtool (tests) only when root runs this directly, never through sudo.
[ -z "${SUDO_UID:-}" ] && AVTOOL=${AVTOOL_RESCAN_AVTOOL:-$AVTOOL}
[ -x "$AVTOOL" ] || exit 0                            # removed, not purged
[ -e /etc/courier/filters/active/avtool ] || [ -n "${AVTOOL_RESCAN_ALWAYS:-}" ] || exit 0
out=$("$AVTOOL" rescan --if-changed --notify --quiet 2>&1); rc=$?
[ "$rc" -le 1 ] && exit 0
case $out in   # get_ides.sh's rescan after an update holds the state: it does the work
  *"another avtool rescan is using"*) exit 0 ;;
esac
printf 'avtool: the hourly rescan of delivered mail failed on %s (exit %s):\n\n%s\n' \
  "$(hostname)" "$rc" "$out"
exit 1
