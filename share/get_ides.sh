#!/bin/sh
# The update script that `avtool run-get-ides` runs with privileges (avfilter's get_ides.sh,
# for ClamAV): update the signatures, check that they load, tell the running filter to reload.
# Progress goes to stdout (the body of the tagged message), problems to stderr with '#'
# severities (none: critical, '#': error, '##': warning, ...), and the last line is
# "subject: OK" or "subject: FAILED <why>" (the tag of the message's Subject).
#
#   get_ides.sh        update (freshclam), check, reload
#   get_ides.sh new    first full install: fetch the whole database, then check and reload
#
# Settings (shell variables) from /etc/avtool/get_ides.conf if it exists:
#   UPDATE_COMMAND  default "freshclam --stdout --no-warnings" (e.g. a local mirror sync)
#   DB_DIR          default /var/lib/clamav
#   CHECK_COMMAND   default: clamscan with DB_DIR on a tiny file (the database must load)
#   RELOAD_COMMAND  default "sudo -n -u courier /usr/local/bin/avtool sig -l reload virus"
# Install: root-owned, mode 0755, as /usr/local/lib/avtool/get_ides.sh (the path avtool knows).
set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin
# maildrop runs filters under umask 077: files this writes must stay readable by clamd's user.
umask 022
CONF=/etc/avtool/get_ides.conf
# Another settings file (tests) only when root runs this directly: through sudo, the caller
# must not choose a file of shell code that root then runs (sudo drops the variable anyway).
[ -z "${SUDO_UID:-}" ] && CONF=${AVTOOL_GET_IDES_CONF:-$CONF}
UPDATE_COMMAND="freshclam --stdout --no-warnings"
DB_DIR=/var/lib/clamav
CHECK_COMMAND=""
RELOAD_COMMAND="sudo -n -u courier /usr/local/bin/avtool sig -l reload virus"
# shellcheck disable=SC1090
[ -r "$CONF" ] && . "$CONF"

fail() { echo "$1" >&2; echo "subject: FAILED $2"; exit 1; }
step() { echo "== $*"; }

cat >/dev/null   # the announcement itself: read, not needed

if [ "${1:-}" = new ]; then
  step "first full install: removing the old database in $DB_DIR"
  rm -f "$DB_DIR"/*.cvd "$DB_DIR"/*.cld 2>/dev/null || echo "#could not clean $DB_DIR" >&2
fi

step "updating: $UPDATE_COMMAND"
sh -c "$UPDATE_COMMAND" 2>&1 || fail "update command failed: $UPDATE_COMMAND" "update"

step "checking that the database loads"
if [ -n "$CHECK_COMMAND" ]; then
  sh -c "$CHECK_COMMAND" 2>&1 || fail "the new database does not load" "check"
else
  probe=$(mktemp) && echo probe > "$probe"
  clamscan --quiet --database="$DB_DIR" "$probe" 2>&1; rc=$?
  rm -f "$probe"
  [ $rc -le 1 ] || fail "clamscan could not load $DB_DIR (exit $rc)" "check"
fi

step "reloading the running filter"
sh -c "$RELOAD_COMMAND" 2>&1 || fail "the filter did not confirm the reload" "reload"

echo "subject: OK"
