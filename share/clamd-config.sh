#!/usr/bin/env bash
# Make Debian's clamd say what it could not check, as avtool's "unchecked" verdict needs.
#
#   bash share/clamd-config.sh [CLAMD_CONF]     (default /etc/clamav/clamd.conf)
#
# Without these settings clamd answers OK for an encrypted archive or document, and for what it
# skipped at its limits (MaxRecursion, MaxFileSize, MaxScanSize, MaxFiles): the mail looks clean.
# With them it names Heuristics.Encrypted.* and Heuristics.Limits.Exceeded.*, which avtool
# calls unchecked (avtool/engine/replies.py) and, by default (policy.unchecked = "pass"),
# delivers with "X-Virus-Status: Unchecked (...)".
#
# Why the file and not debconf: Debian's clamav-daemon has no debconf question for any of these
# (clamav-daemon.templates), and its postinst keeps them when it regenerates the file ("Preserve
# manually created, usually not needed options"); README.Debian: "The package also handles
# manual editing of its configuration file, /etc/clamav/clamd.conf, gracefully". Measured:
# after this script, `dpkg-reconfigure clamav-daemon` left the file byte for byte as it was,
# and the file its postinst generated carried the four lines too. A line that exists is
# changed in place, a missing one is added at the end; nothing else is touched.
#
# Prints each change, keeps a copy of the file as it was (CLAMD_CONF.avtool-TIMESTAMP), and
# changes nothing when everything is already set. Exit 0 unchanged, 10 changed, 1 error.
set -euo pipefail
conf=${1:-/etc/clamav/clamd.conf}
say() { printf 'avtool-install: %s\n' "$*"; }

# name wanted-value; clamd.conf(5): BOOL is yes/no, true/false or 1/0
wanted=(
  "AlertEncrypted yes"         # both of the next two (clamd.conf(5))
  "AlertEncryptedArchive yes"  # encrypted zip, 7z, rar: Heuristics.Encrypted.Zip, ...
  "AlertEncryptedDoc yes"      # encrypted PDF, OLE2: Heuristics.Encrypted.PDF, ...
  "AlertExceedsMax yes"        # Heuristics.Limits.Exceeded.MaxRecursion, .MaxFileSize, ...
)

[[ -f $conf && -r $conf ]] || { say "cannot read $conf" >&2; exit 1; }

is_yes() { [[ ${1,,} =~ ^(yes|true|1)$ ]]; }

# The value clamd reads: the last line naming the option wins (shared/optparser.c reads the
# file top to bottom, setting as it goes).
current() { awk -v k="$1" '$1 == k { v = $2 } END { print v }' "$conf"; }

changes=()
for item in "${wanted[@]}"; do
  name=${item% *} value=${item#* }
  now=$(current "$name")
  if [[ -n $now ]] && is_yes "$now"; then continue; fi
  changes+=("$name|$now|$value")
done

if ((${#changes[@]} == 0)); then
  say "$conf already reports what clamd cannot check (Alert* set): unchanged"
  exit 0
fi

backup="$conf.avtool-$(date +%Y%m%d%H%M%S)"
cp -p "$conf" "$backup"
say "backup of $conf: $backup"
tmp=$(mktemp "$conf.avtool-new.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cp -p "$conf" "$tmp"
added=""
for change in "${changes[@]}"; do
  IFS='|' read -r name now value <<<"$change"
  if [[ -n $now ]]; then
    # every non-comment line of the option, so that the last one (the one clamd uses) agrees
    sed -i -E "s/^([[:space:]]*)$name([[:space:]]).*/\\1$name\\2$value/" "$tmp"
    say "$conf: $name $now -> $value"
  else
    if [[ -z $added ]]; then
      printf '# added by avtool (share/clamd-config.sh): report what clamd could not check\n' >>"$tmp"
      added=1
    fi
    printf '%s %s\n' "$name" "$value" >>"$tmp"
    say "$conf: $name $value (added)"
  fi
done
mv "$tmp" "$conf"
trap - EXIT
exit 10
