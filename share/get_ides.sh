#!/bin/sh
# The update script that `avtool run-get-ides` runs with privileges (avfilter's get_ides.sh,
# for ClamAV): update the signatures, check that they load, tell the running filter to reload.
# Progress goes to stdout (the body of the tagged message), problems to stderr with '#'
# severities (none: critical, '#': error, '##': warning, ...), and the last line is
# "subject: OK", "subject: FAILED <why>" or "subject: SKIPPED busy|interval" (the tag of the
# message's Subject; a skip exits 0, so that maildrop keeps the mail and nothing is redelivered).
#
#   get_ides.sh        update (freshclam), check, reload
#   get_ides.sh new    first full install: fetch the whole database, then check and reload
#
# Settings (shell variables) from /etc/avtool/get_ides.conf if it exists:
#   UPDATE_COMMAND  default "freshclam --stdout --no-warnings" (e.g. a local mirror sync)
#   DB_DIR          default /var/lib/clamav (must be readable by CHECK_USER)
#   CHECK_COMMAND   default: clamscan with DB_DIR on a tiny file (the database must load)
#   CHECK_USER      default clamav: the check runs as this user, never as root (a flaw in a
#                   database parser must not run with root's rights)
#   RELOAD_COMMAND  default "sudo -n -u courier /usr/local/bin/avtool sig -l reload virus"
#   RESCAN_COMMAND  default "/usr/local/bin/avtool rescan --notify --quiet": after a successful
#                   update, look for already delivered mail that the new signatures name (as
#                   root, who may read every mailbox; within RUN_TIMEOUT: a rescan cut short
#                   goes on at the next run or the hourly avtool-rescan job). Its report goes
#                   to the postmaster, its output into this mail. Empty: no rescan.
#   MIN_INTERVAL    default 3600: seconds between two runs, whoever asks (mail, or the mailbox
#                   user calling sudo directly); a request inside it ends "subject: SKIPPED"
#   RUN_TIMEOUT     default 540: seconds for all the steps together; a step still running
#                   then is killed (timeout(1)), so a hung update never holds the lock forever
#   STATE_DIR       default /var/lib/avtool-get-ides: the lock and the last run's time, in a
#                   directory of the user this runs as (root), writable by nobody else
# Forged announcements cost at most one run per MIN_INTERVAL, one at a time: the lock and the
# stamp live here, where root runs, not in the xfilter (the mailbox user could edit its files).
# Install: root-owned, mode 0755, as /usr/local/lib/avtool/get_ides.sh (the path avtool knows).
set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin
# maildrop runs filters under umask 077: files this writes must stay readable by clamd's user.
umask 022
cd / || exit 1   # the caller's directory may be one that CHECK_USER cannot enter
CONF=/etc/avtool/get_ides.conf
# Another settings file (tests) only when root runs this directly: through sudo, the caller
# must not choose a file of shell code that root then runs (sudo drops the variable anyway).
[ -z "${SUDO_UID:-}" ] && CONF=${AVTOOL_GET_IDES_CONF:-$CONF}
UPDATE_COMMAND="freshclam --stdout --no-warnings"
DB_DIR=/var/lib/clamav
CHECK_COMMAND=""
CHECK_USER=clamav
RELOAD_COMMAND="sudo -n -u courier /usr/local/bin/avtool sig -l reload virus"
RESCAN_COMMAND="/usr/local/bin/avtool rescan --notify --quiet"
MIN_INTERVAL=3600
RUN_TIMEOUT=540
STATE_DIR=/var/lib/avtool-get-ides
# shellcheck disable=SC1090
[ -r "$CONF" ] && . "$CONF"

fail() { echo "$1" >&2; echo "subject: FAILED $2"; exit 1; }
skip() { echo "skipped: $1"; echo "###update skipped: $1" >&2; echo "subject: SKIPPED $2"; exit 0; }
step() { echo "== $*"; }
when() { date -u -d "@$1" '+%Y-%m-%d %H:%M:%S UTC'; }
number() { case $2 in ''|*[!0-9]*) fail "$1 must be a number of seconds, not '$2'" "settings";; esac; }
number MIN_INTERVAL "$MIN_INTERVAL"
number RUN_TIMEOUT "$RUN_TIMEOUT"

step "settings: $CONF$([ -r "$CONF" ] || echo ' (absent: the defaults)')"
cat >/dev/null   # the announcement itself: read, not needed

# The state dir: ours, a real directory, writable by nobody else (else someone could hold the
# lock, or rewrite the stamp to run an update at every mail).
[ -d "$STATE_DIR" ] || install -d -m 0755 "$STATE_DIR" 2>/dev/null
if [ -L "$STATE_DIR" ] || [ ! -d "$STATE_DIR" ] || [ "$(stat -c %u "$STATE_DIR")" != "$(id -u)" ] ||
   [ -n "$(find "$STATE_DIR" -maxdepth 0 \( -perm -g+w -o -perm -o+w \) -print)" ]; then
  fail "$STATE_DIR must be a directory of uid $(id -u), writable by nobody else" "state"
fi

# One update at a time. A later request ends at once rather than waiting: the running update
# fetches what it would have fetched, and the interval would skip it afterwards anyway. The
# lock file is 0600, so that no other user can open it and hold the lock (flock needs an fd).
old_umask=$(umask); umask 077
exec 9>>"$STATE_DIR/lock" || fail "cannot open $STATE_DIR/lock" "state"
umask "$old_umask"
chmod 0600 "$STATE_DIR/lock"
last_run() { last=$(cat "$STATE_DIR/last" 2>/dev/null); case $last in ''|*[!0-9]*) last=0;; esac; }
if ! flock -n 9; then
  last_run
  [ "$last" -gt 0 ] && since=" (started at $(when "$last"))" || since=""
  skip "another update is running$since" "busy"
fi
last_run   # read under the lock: a run that just ended has written its stamp

# At most one run per MIN_INTERVAL. The stamp is written when a run starts, so that a run that
# fails, hangs or is killed counts too (a redelivered mail then finds it). A stamp in the
# future (the clock was set back) does not block updates.
now=$(date +%s)
if [ "$last" -le "$now" ] && [ $((now - last)) -lt "$MIN_INTERVAL" ]; then
  skip "last update at $(when "$last"); the next one not before $(when $((last + MIN_INTERVAL))) (MIN_INTERVAL $MIN_INTERVAL s)" "interval"
fi
echo "$now" > "$STATE_DIR/last.new" && mv -f "$STATE_DIR/last.new" "$STATE_DIR/last" ||
  fail "cannot write $STATE_DIR/last" "state"
deadline=$((now + RUN_TIMEOUT))

# Run a step with what is left of RUN_TIMEOUT: timeout(1) kills the step's whole process group
# (coreutils timeout: the command runs in a group of its own). fd 9 is closed for the step, so
# that nothing it leaves behind keeps the lock.
bounded() {
  left=$((deadline - $(date +%s)))
  [ "$left" -gt 0 ] || return 124
  timeout -k 5 "$left" "$@" 9>&-
}
# The check runs as CHECK_USER when we are root (setpriv: no PAM session, only the ids change).
as_check_user="" check_as=$(id -un)
if [ "$(id -u)" = 0 ] && [ -n "$CHECK_USER" ]; then
  case $CHECK_USER in *[!a-z0-9_-]*) fail "CHECK_USER: not a user name: $CHECK_USER" "settings";; esac
  check_gid=$(id -g "$CHECK_USER" 2>/dev/null) || fail "CHECK_USER: no user $CHECK_USER" "settings"
  as_check_user="setpriv --reuid=$CHECK_USER --regid=$check_gid --init-groups --"
  check_as=$CHECK_USER
fi
timed_out() { [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; }

if [ "${1:-}" = new ]; then
  step "first full install: removing the old database in $DB_DIR"
  rm -f "$DB_DIR"/*.cvd "$DB_DIR"/*.cld 2>/dev/null || echo "#could not clean $DB_DIR" >&2
fi

step "updating: $UPDATE_COMMAND"
bounded sh -c "$UPDATE_COMMAND" 2>&1; rc=$?
timed_out $rc && fail "update command timed out (RUN_TIMEOUT $RUN_TIMEOUT s)" "update (timeout)"
[ $rc -eq 0 ] || fail "update command failed: $UPDATE_COMMAND" "update"

step "checking that the database loads (as user $check_as)"
if [ -n "$CHECK_COMMAND" ]; then
  bounded $as_check_user sh -c "$CHECK_COMMAND" 2>&1; rc=$?
  timed_out $rc && fail "the check timed out (RUN_TIMEOUT $RUN_TIMEOUT s)" "check (timeout)"
  [ $rc -eq 0 ] || fail "the new database does not load" "check"
else
  echo probe | bounded $as_check_user clamscan --quiet --database="$DB_DIR" - 2>&1; rc=$?
  timed_out $rc && fail "the check timed out (RUN_TIMEOUT $RUN_TIMEOUT s)" "check (timeout)"
  [ $rc -le 1 ] || fail "clamscan could not load $DB_DIR (exit $rc)" "check"
fi

step "reloading the running filter"
bounded sh -c "$RELOAD_COMMAND" 2>&1; rc=$?
timed_out $rc && fail "the reload timed out (RUN_TIMEOUT $RUN_TIMEOUT s)" "reload (timeout)"
[ $rc -eq 0 ] || fail "the filter did not confirm the reload" "reload"

# The update is done and in use: what the rescan finds is news, not a failure of the update.
if [ -n "$RESCAN_COMMAND" ]; then
  step "rescanning delivered mail: $RESCAN_COMMAND"
  bounded sh -c "$RESCAN_COMMAND" 2>&1; rc=$?
  if timed_out $rc; then
    echo "##the rescan stopped at RUN_TIMEOUT ($RUN_TIMEOUT s); the next one goes on from there" >&2
  elif [ $rc -eq 1 ]; then
    echo "##the rescan found infected mail that was delivered before this update" >&2
  elif [ $rc -ne 0 ]; then
    echo "#the rescan failed (exit $rc): $RESCAN_COMMAND" >&2
  fi
fi

echo "subject: OK"
