#!/usr/bin/env bash
# A real Courier MTA on this machine for avtool's e2e tests: docs/notes/courier.md sections 2, 6, 7.
#
#   courier.sh up      install (if missing), configure, start: syslog sink, authdaemond,
#                      courierfilter, courier, esmtpd on $AVTOOL_E2E_ADDRESS:$AVTOOL_E2E_PORT
#   courier.sh down    stop them all (and our syslog sink)
#   courier.sh reset   no active filter, no filter socket, empty queue, tmp and Maildirs
#   courier.sh status  one line per daemon; exit 0 only if all run
#
# Root only; every step can be run again. Environment: AVTOOL_E2E_PORT (2525),
# AVTOOL_E2E_ADDRESS (127.0.0.1), AVTOOL_E2E_LOG (/var/log/avtool-e2e/syslog.log),
# AVTOOL_E2E_PASSWORD (SMTP AUTH password of the test user avtest).
set -euo pipefail

PORT=${AVTOOL_E2E_PORT:-2525}
ADDRESS=${AVTOOL_E2E_ADDRESS:-127.0.0.1}
LOG=${AVTOOL_E2E_LOG:-/var/log/avtool-e2e/syslog.log}
PASSWORD=${AVTOOL_E2E_PASSWORD:-avtest-password}
DOMAIN=example.test
TESTUSER=avtest       # SMTP AUTH user and default recipient
TESTUSERS="avtest avtest2 avtest3" # recipients of multi-recipient tests
PY=/usr/bin/python3 # not whatever python3 is first in PATH: pyenv shims and venvs come and go
HERE=$(cd "$(dirname "$0")" && pwd)
STATE=/run/avtool-e2e
SINK_PID=$STATE/syslog_sink.pid
ETC=/etc/courier
SPOOL=/var/lib/courier
MARK_BEGIN="# >>> avtool e2e"
MARK_END="# <<< avtool e2e"

say() { printf 'courier.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

# A pid runs if /proc says so and it is not a zombie: PID 1 here does not reap, and a zombie
# still passes kill -0 (pitfall 10).
pid_alive() {
	local pid=$1 state
	[ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
	state=$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
	[ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

pidfile_alive() { [ -r "$1" ] && pid_alive "$(head -n1 "$1" 2>/dev/null | tr -dc 0-9)"; }

# Live (non-zombie) pids whose command name is $1.
pids_named() {
	local f pid
	for f in /proc/[0-9]*/comm; do
		[ "$(cat "$f" 2>/dev/null)" = "$1" ] || continue
		pid=${f#/proc/}
		pid=${pid%/comm}
		if pid_alive "$pid"; then echo "$pid"; fi
	done
}

none_named() { [ -z "$(pids_named "$1")" ]; }
some_named() { [ -n "$(pids_named "$1")" ]; }

port_open() { (exec 3<>"/dev/tcp/$ADDRESS/$PORT") 2>/dev/null; }
port_closed() { ! port_open; }
pid_gone() { ! pid_alive "$1"; }

# wait_until SECONDS COMMAND...: poll every 50 ms.
wait_until() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		[ $SECONDS -lt "$deadline" ] || return 1
		sleep 0.05
	done
}

install_packages() {
	local need=()
	dpkg-query -W -f='${Status}' courier-mta 2>/dev/null | grep -q 'ok installed' || need+=(courier-mta)
	[ -x /usr/bin/python3 ] || need+=(python3)
	[ ${#need[@]} -eq 0 ] && return 0
	say "installing ${need[*]}"
	# postinst would start esmtpd on port 25, on all addresses, without a policy-rc.d that
	# says no (docs/notes/courier.md §1): make one for the install if the machine has none.
	local made_policy=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	local rc=0
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q "${need[@]}" >&2 || {
		apt-get update -q >&2 && apt-get install -y -q "${need[@]}" >&2
	} || rc=$?
	[ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
	[ $rc -eq 0 ] || die "apt-get install ${need[*]} failed"
}

configure() {
	# esmtpd: our block at the end overrides the defaults above it (the file is sourced).
	local esmtpd=$ETC/esmtpd
	sed -i "\%^$MARK_BEGIN\$%,\%^$MARK_END\$%d" "$esmtpd"
	cat >>"$esmtpd" <<-EOF
		$MARK_BEGIN
		# written by avtool's tests/e2e/courier.sh; the file is sourced, so these win
		ADDRESS=$ADDRESS
		PORT=$PORT
		BOFHCHECKDNS=0
		TARPIT=0
		MAXDAEMONS=100
		MAXPERC=100
		MAXPERIP=100
		TCPDOPTS="-stderrlogger=/usr/sbin/courierlogger -noidentlookup -nodnslookup"
		ESMTPAUTH="PLAIN LOGIN"
		$MARK_END
	EOF
	# The recipient domain must contain a dot (pitfall 1).
	grep -qx "$DOMAIN" $ETC/locals 2>/dev/null || echo "$DOMAIN" >>$ETC/locals
	# The package ships no .dat files; without smtpaccess.dat 127.0.0.1 is no RELAYCLIENT.
	makesmtpaccess >&2
	makeacceptmailfor >&2
	makealiases >&2
	makehosteddomains >&2

	local user home
	for user in $TESTUSERS; do
		if ! id "$user" >/dev/null 2>&1; then
			useradd -m -s /usr/sbin/nologin "$user"
		fi
		home=$(getent passwd "$user" | cut -d: -f6)
		if [ ! -d "$home/Maildir/new" ]; then
			maildirmake "$home/Maildir"
		fi
		chown -R "$user:" "$home/Maildir"
	done
	echo "$TESTUSER:$PASSWORD" | chpasswd # SMTP AUTH goes through authdaemond -> authpam
	mkdir -p "$STATE" "$(dirname "$LOG")"
}

start_sink() {
	if $PY "$HERE/syslog_sink.py" --check; then
		pidfile_alive "$SINK_PID" || say "/dev/log has another listener: logs go there, not to $LOG"
		return 0
	fi
	: >"$LOG" # a fresh log per sink
	setsid $PY "$HERE/syslog_sink.py" --socket /dev/log --log "$LOG" --pid "$SINK_PID" \
		</dev/null >/dev/null 2>&1 &
	wait_until 5 $PY "$HERE/syslog_sink.py" --check || die "the syslog sink did not start"
}

stop_sink() {
	pidfile_alive "$SINK_PID" || return 0
	local pid
	pid=$(head -n1 "$SINK_PID")
	grep -q syslog_sink "/proc/$pid/cmdline" 2>/dev/null || return 0 # not ours any more
	kill "$pid"
	wait_until 5 pid_gone "$pid" || say "the syslog sink (pid $pid) did not stop"
}

status_lines() {
	local ok=0
	line() { # NAME yes|no DETAIL
		printf '%-14s %-8s %s\n' "$1" "$([ "$2" = yes ] && echo running || echo stopped)" "$3"
		[ "$2" = yes ] || ok=1
	}
	local pid=
	pidfile_alive "$SINK_PID" && pid=$(head -n1 "$SINK_PID")
	if [ -n "$pid" ]; then line syslog-sink yes "pid $pid -> $LOG"
	elif $PY "$HERE/syslog_sink.py" --check; then line syslog-sink yes "another listener on /dev/log"
	else line syslog-sink no "/dev/log"; fi
	pidfile_alive /run/courier/authdaemon/pid && line authdaemond yes "" || line authdaemond no ""
	pidfile_alive /run/courier/courierfilter.pid && line courierfilter yes \
		"active: $(ls /etc/courier/filters/active | tr '\n' ' ')" || line courierfilter no ""
	some_named courierd && line courierd yes "" || line courierd no ""
	pidfile_alive /run/courier/esmtpd.pid && port_open && line esmtpd yes "$ADDRESS:$PORT" ||
		line esmtpd no "$ADDRESS:$PORT"
	return $ok
}

down() {
	/usr/sbin/esmtpd stop || true
	/usr/sbin/courier stop || true
	/usr/sbin/courierfilter stop || true
	/usr/sbin/authdaemond stop || true
	# The commands return at once; the processes exit within about 0.5 s (docs/notes/courier.md §6).
	wait_until 10 port_closed || say "something still listens on $ADDRESS:$PORT"
	local name
	for name in couriertcpd courierd courierfilter authdaemond; do
		wait_until 10 none_named $name || say "$name still running"
	done
	rm -f /run/courier/esmtpd.pid # left behind by stop; a stale one makes start a no-op
	stop_sink
}

up() {
	install_packages
	configure
	down
	start_sink
	/usr/sbin/authdaemond start
	/usr/sbin/courierfilter start # returns once every active filter closed fd 3
	/usr/sbin/courier start
	/usr/sbin/esmtpd start
	wait_until 10 port_open || die "esmtpd does not listen on $ADDRESS:$PORT"
	wait_until 10 some_named courierd || die "courierd did not start"
	status_lines >&2
}

reset() {
	local f
	rm -f /etc/courier/filters/active/*
	if pidfile_alive /run/courier/courierfilter.pid; then
		# courierfilter stops the unlinked filters on HUP, waiting for each to exit
		kill -HUP "$(cat /run/courier/courierfilter.pid)"
	fi
	# Sockets only: filters/.lock is courierfilter's lock, and without it "courierfilter
	# restart" and "stop" think no courierfilter runs and do nothing.
	find "$SPOOL/filters" "$SPOOL/allfilters" -mindepth 1 -maxdepth 1 -type s -delete
	# The queue and the per-message tmp dirs (tmp/<n>/); tmp/courierd.lock and tmp/broken stay.
	find "$SPOOL/msgq" "$SPOOL/msgs" -mindepth 1 -delete
	for f in "$SPOOL"/tmp/[0-9]*/; do
		[ -d "$f" ] && find "$f" -mindepth 1 -delete
	done
	local user home
	for user in $TESTUSERS; do
		home=$(getent passwd "$user" | cut -d: -f6) || continue
		for f in new cur tmp; do
			if [ -d "$home/Maildir/$f" ]; then find "$home/Maildir/$f" -mindepth 1 -delete; fi
		done
	done
	return 0 # the log stays: tests read it from a mark (harness.log_mark), people after a failure
}

case "${1:-}" in
up)
	start=$EPOCHREALTIME
	up
	say "up in $($PY -c "print(f'{$EPOCHREALTIME - $start:.2f}')") s"
	;;
down) down ;;
reset) reset ;;
status) status_lines ;;
*)
	echo "usage: $0 up|down|reset|status" >&2
	exit 2
	;;
esac
