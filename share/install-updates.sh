#!/usr/bin/env bash
# Install mail-driven signature updates (avtool run-get-ides), as root; every step can be run
# again.
#
#   bash share/install-updates.sh                 the update script only: share/get_ides.sh as
#                                                 /usr/local/lib/avtool/get_ides.sh, root 0755
#   bash share/install-updates.sh --user NAME     and the sudoers drop-in that lets mailbox user
#                                                 NAME run that script as root, and nothing else
#   ... --user NAME --mailbox                     and, when missing, user NAME (a system user),
#                                                 its Maildir and a .mailfilter that xfilters
#                                                 every message through avtool run-get-ides
#
# More options: --run-as USER (the script runs as USER, not root: `run-get-ides -D`),
# --home DIR (NAME's home when created: /var/lib/avtool-updates), --avtool PATH (the avtool the
# .mailfilter runs: /usr/local/bin/avtool). Then subscribe NAME's address to ClamAV's update
# announcements, and have Courier deliver NAME's mail through maildrop (a .courier file that
# says `| /usr/bin/maildrop`; --mailbox writes one when NAME has none). With the Debian package
# installed, its /usr/lib/avtool/get_ides.sh and /usr/bin/avtool are used and nothing is copied.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
script=/usr/local/lib/avtool/get_ides.sh   # = avtool.updates.SCRIPT (a unit test checks)
drop_in=/etc/sudoers.d/avtool-get-ides
state=/var/lib/avtool-get-ides   # = get_ides.sh's STATE_DIR = avtool.updates.STATE_DIR
user="" run_as=root mailbox="" home=/var/lib/avtool-updates avtool=/usr/local/bin/avtool avtool_given=""
say() { printf 'avtool-install-updates: %s\n' "$*"; }
die() { printf 'avtool-install-updates: %s\n' "$*" >&2; exit 1; }

while (($#)); do
  case $1 in
    --user) user=${2:?--user needs a name}; shift 2 ;;
    --run-as) run_as=${2:?--run-as needs a user}; shift 2 ;;
    --home) home=${2:?--home needs a directory}; shift 2 ;;
    --avtool) avtool=${2:?--avtool needs a path}; avtool_given=1; shift 2 ;;
    --mailbox) mailbox=1; shift ;;
    -h|--help) sed -n '2,18p' "$0" | cut -c3-; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ $(id -u) == 0 ]] || die "run me as root"
name_ok() { [[ $1 =~ ^[a-z_][a-z0-9_-]{0,31}$ ]]; }
[[ -z $user ]] || name_ok "$user" || die "not a user name: $user"
name_ok "$run_as" || die "not a user name: $run_as"
[[ -z $mailbox || -n $user ]] || die "--mailbox needs --user NAME"

# With the Debian package installed, its avtool runs the package's own copy of the script
# (avtool.updates.script_for): the drop-in names that one, and nothing is copied beside it.
packaged=/usr/lib/avtool/get_ides.sh
if [[ -x $packaged ]] && dpkg-query -W -f '${Status}' avtool 2>/dev/null | grep -q ' installed$'; then
  script=$packaged
  [[ -n $avtool_given ]] || avtool=/usr/bin/avtool
fi

install_script() {
  if [[ $script == "$packaged" ]]; then
    say "the Debian package's $script is the update script (nothing copied)"
    return
  fi
  # Every directory on the way is root's and not writable by others, so nobody can swap the
  # script under sudo's feet.
  install -d -o root -g root -m 0755 /usr/local/lib/avtool
  install -o root -g root -m 0755 "$here/share/get_ides.sh" "$script"
  say "installed $script (root:root 0755)"
}

install_state() {
  # The script's lock and last-run stamp: what bounds forged announcements to one update at a
  # time and one per MIN_INTERVAL. The user the script runs as owns it, and nobody else may
  # write it (the mailbox user must not hold the lock or rewind the stamp).
  local group; group=$(id -gn "$run_as") || die "no such user: $run_as"
  install -d -o "$run_as" -g "$group" -m 0755 "$state"
  chown -h "$run_as:$group" "$state/lock" "$state/last" 2>/dev/null || true
  say "prepared $state ($run_as 0755): the update lock and the time of the last run"
}

install_sudoers() {
  local rule tmp group
  command -v visudo >/dev/null || die "sudo is not installed (apt-get install sudo)"
  rule="(root)"
  if [[ $run_as != root ]]; then
    group=$(id -gn "$run_as") || die "no such user: $run_as"
    rule="($run_as : $group)"
  fi
  tmp=$(mktemp /etc/sudoers.d/.avtool-get-ides.XXXXXX)   # '.' names are ignored by sudo
  sed -e "s/^User_Alias AVTOOL_UPDATERS = .*/User_Alias AVTOOL_UPDATERS = $user/" \
      -e "s/^AVTOOL_UPDATERS ALL = (root)/AVTOOL_UPDATERS ALL = $rule/" \
      -e "s|/usr/local/lib/avtool/get_ides\.sh|$script|g" \
      "$here/share/sudoers.avtool-get-ides" > "$tmp"
  chmod 0440 "$tmp"
  if ! visudo -qcf "$tmp" >/dev/null; then
    rm -f "$tmp"
    die "visudo refused the drop-in (left unchanged: $drop_in)"
  fi
  mv -f "$tmp" "$drop_in"
  say "installed $drop_in: $user may run $script as $run_as, nothing else (sudo -l -U $user)"
}

install_mailbox() {
  if ! id "$user" >/dev/null 2>&1; then
    install -d -m 0755 "$(dirname "$home")"   # useradd makes the home, not its parents
    useradd --system --create-home --home-dir "$home" --shell /usr/sbin/nologin "$user"
    say "created the system user $user, home $home (userdel -r $user removes it)"
  fi
  local h; h=$(getent passwd "$user" | cut -d: -f6)
  [[ -d $h ]] || install -d -o "$user" -g "$(id -gn "$user")" -m 0700 "$h"
  [[ -d $h/Maildir/new ]] || runuser -u "$user" -- maildirmake "$h/Maildir"
  local d_opt=""
  if [[ $run_as != root ]]; then d_opt="-D $(id -u "$run_as")/$(id -g "$run_as") "; fi
  if [[ ! -e $h/.mailfilter ]]; then
    runuser -u "$user" -- sh -c 'umask 077; cat > "$1"' sh "$h/.mailfilter" <<EOF
# avtool: each ClamAV update announcement runs the signature update; the message is kept
# here with its Subject tagged [OK] or [FAILED ...] and the update's output as its body.
# maildrop runs xfilter commands with the user's login shell: a system user's is nologin.
SHELL="/bin/sh"
# A bounce (empty envelope sender; maildrop says MAILER-DAEMON) is never an announcement:
# kept here, no update run.
if (\$FROM ne "" && \$FROM ne "MAILER-DAEMON")
{
  xfilter "$avtool run-get-ides $d_opt-t 600"
}
to "\$HOME/Maildir/"
EOF
    say "wrote $h/.mailfilter"
  fi
  if [[ ! -e $h/.courier ]]; then
    # -f: the envelope sender, empty for a bounce (maildrop would otherwise say the user)
    runuser -u "$user" -- sh -c 'umask 077; echo "| /usr/bin/maildrop -f \"\$SENDER\"" > "$1"' \
      sh "$h/.courier"
    say "wrote $h/.courier: Courier delivers $user's mail through maildrop"
  fi
}

install_script
install_state
if [[ -n $user ]]; then install_sudoers; fi
if [[ -n $mailbox ]]; then install_mailbox; fi
