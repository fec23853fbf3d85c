"""Every configuration key: ``section.name``, kind, default, a one-line doc and how a reload
applies it (kinds.Reload), in one place; the registry ``KEYS`` built from them (the cross-key
checks are in checks.py).

To add a key, add one ``key(...)`` entry here and name it in ``KEYS``; ``avtool config``, the
sample config, the environment override ``AVTOOL_SECTION_NAME``, validation and what a reload
does follow from it. Read values with ``cfg[keys.NAME]``, typed. Nothing here imports the Config
(avtool.config imports this module): the checks see it through the ``Resolved`` protocol.
"""

from __future__ import annotations

from avtool.config.kinds import (
    Bool,
    Choice,
    Int,
    Seconds,
    Size,
    Text,
    TextList,
    key,
    table,
)

# A clamd address: an absolute unix socket path, or host:port / [v6]:port.
_BACKEND = r"/\S+|[A-Za-z0-9_.-]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}"
_BACKEND_HINT = "must be an absolute unix socket path or host:port"

# ---- the keys -------------------------------------------------------------------------------
BACKENDS = key(
    "clamd.backends",
    TextList(Text(_BACKEND, _BACKEND_HINT), min_items=1),
    ("/var/run/clamav/clamd.ctl",),
    "clamd addresses: unix socket paths or host:port; a failing one is set aside, the next tried",
    reload="engine",
)
BALANCE = key(
    "clamd.balance",
    Choice(("ordered", "round-robin", "least-busy")),
    "ordered",
    "ordered: the first healthy backend; round-robin: each in turn; "
    "least-busy: fewest scans in flight",
    reload="engine",
)
CONNECT_TIMEOUT = key(
    "clamd.connect_timeout",
    Seconds(0.01, 60.0),
    2.0,
    "seconds to wait for a connection to clamd",
    reload="engine",
)
SCAN_TIMEOUT = key(
    "clamd.scan_timeout",
    Seconds(0.1, 3600.0),
    120.0,
    "seconds to wait for clamd's verdict",
    reload="engine",
)
RETRY_AFTER = key(
    "clamd.retry_after",
    Seconds(0.0, 3600.0),
    30.0,
    "seconds a backend that failed is set aside before it is tried again",
    reload="engine",
)
TRANSFER = key(
    "clamd.transfer",
    Choice(("auto", "fildes", "instream", "scan")),
    "auto",
    "how the message reaches clamd; auto: FILDES on unix sockets, INSTREAM over TCP",
    reload="engine",
)
MAX_SIZE = key(
    "scan.max_size",
    Size(1, (4 << 30) - 1),
    "25M",
    "larger messages are not sent to clamd and count as unchecked; keep <= StreamMaxLength",
    reload="engine",
)
VERBOSITY = key(
    "log.verbosity",
    Int(0, 3),
    1,
    "0 errors only, 1 one line per message, 2 the same as 1 (avfilter's scale), 3 debug",
    reload="log",
)

# Courier and the filter daemon (courierfilter(8); docs/notes/courier.md).
FILTER_DIR = key(
    "serve.filter_dir",
    Choice(("allfilters", "filters")),
    "allfilters",
    "socket in allfilters/ (every message) or filters/ (only non-whitelisted recipients)",
    reload="restart",
)
COURIER_DIR = key(
    "serve.courier_dir",
    Text(r"/.*", "must be absolute"),
    "/var/lib/courier",
    "Courier's state dir, holding allfilters/ and filters/",
    reload="restart",
)
SPOOL_DIR = key(
    "serve.spool_dir",
    Text(r"/.*", "must be absolute"),
    "/var/lib/courier/tmp",
    "data and control files must be regular files below this dir",
    reload="live",
)
PID_FILE = key(
    "serve.pid_file",
    Text(r"/.*", "must be absolute"),
    "/run/courier/avtool.pid",
    "pid file of the daemon (not written with serve --debug)",
    reload="restart",
)
PIPE = key(
    "serve.pipe",
    Text(r"/.*", "must be absolute"),
    "/run/courier/avtool.pipe",
    "named pipe that `avtool sig` creates to read the daemon's answers",
    reload="restart",
)
MAX_SCANS = key(
    "serve.max_scans",
    Int(0, 1024),
    0,
    "messages scanned at once; more wait their turn; 0: twice the CPU count",
    reload="restart",
)
MAX_CONNECTIONS = key(
    "serve.max_connections",
    Int(0, 4096),
    0,
    "worker threads (TCP clamds, quarantine, header rewrites); the loop holds this + 512 "
    "connections, more wait in the backlog; 0: 4 x max_scans, >= 16",
    reload="restart",
)
MESSAGE_TIMEOUT = key(
    "serve.message_timeout",
    Seconds(1.0, 3600.0),
    150.0,
    "deadline per message, waiting for a scan slot included; past it: 432 (Courier has none)",
    reload="live",
)
READ_TIMEOUT = key(
    "serve.read_timeout",
    Seconds(0.1, 600.0),
    30.0,
    "seconds Courier gets to send a whole request on the filter socket",
    reload="live",
)
DRAIN_TIMEOUT = key(
    "serve.drain_timeout",
    Seconds(0.0, 600.0),
    30.0,
    "on shutdown, seconds to finish messages in flight",
    reload="live",
)
MANUAL_START = key(
    "serve.manual_start",
    Bool(),
    False,
    "install the socket even when not started by courierfilter (fd 3 closed)",
    reload="restart",
)
DRY_RUN = key(
    "serve.dry_run",
    Bool(),
    False,
    "decide and log what would happen, but accept every message unchanged",
    reload="live",
)

# What to do with each verdict (policy.py).
_ACTIONS = ("reject", "drop", "quarantine", "pass", "defer")
INFECTED = key(
    "policy.infected",
    Choice(_ACTIONS),
    "reject",
    "action for infected mail when no pattern matches: reject, drop, quarantine, pass, defer",
    reload="live",
)
PUA = key(
    "policy.pua",
    Choice(("infected",) + _ACTIONS),
    "infected",
    "action for PUA.* names (clamd DetectPUA); infected: same as policy.infected",
    reload="live",
)
HEURISTICS = key(
    "policy.heuristics",
    Choice(("infected",) + _ACTIONS),
    "infected",
    "action for Heuristics.* names other than encrypted/limits; infected: as policy.infected",
    reload="live",
)
_GLOBS = TextList(Text(r"[^\s]+", "must be a virus-name glob without spaces"))
PATTERNS_PASS = key(
    "policy.pass",
    _GLOBS,
    (),
    "virus-name globs to pass (with the header)",
    reload="live",
)
PATTERNS_REJECT = key(
    "policy.reject",
    _GLOBS,
    (),
    "virus-name globs to reject",
    reload="live",
)
PATTERNS_DROP = key(
    "policy.drop",
    _GLOBS,
    (),
    "virus-name globs to drop silently",
    reload="live",
)
PATTERNS_QUARANTINE = key(
    "policy.quarantine",
    _GLOBS,
    (),
    "virus-name globs to quarantine",
    reload="live",
)
PATTERNS_DEFER = key(
    "policy.defer",
    _GLOBS,
    (),
    "virus-name globs to defer (4xx)",
    reload="live",
)
REJECT_TEXT = key(
    "policy.reject_text",
    Text(r"[^\r\n]*", "must be one line"),
    "Virus found: {virus}",
    "text of the 550 5.7.1 reply; {virus} is replaced by the names found",
    reload="live",
)
UNCHECKED = key(
    "policy.unchecked",
    Choice(_ACTIONS),
    "pass",
    "action when clamd could not look (too large, its limits, encrypted archive)",
    reload="live",
)
FAILED = key(
    "policy.failed",
    Choice(("defer", "pass")),
    "defer",
    "clamd down or timed out: defer (432, Courier retries) or pass (fail-open, logged as error)",
    reload="live",
)
SKIP_AUTHENTICATED = key(
    "policy.skip_authenticated",
    Bool(),
    False,
    "do not scan mail from authenticated senders",
    reload="live",
)
SKIP_RELAY_CLIENTS = key(
    "policy.skip_relay_clients",
    Bool(),
    False,
    "do not scan mail from RELAYCLIENT hosts (smtpaccess)",
    reload="live",
)
PASS_RECIPIENTS = key(
    "policy.pass_recipients",
    TextList(Text(r"[^\s]+", "must be an address glob")),
    (),
    "recipient globs (e.g. postmaster@*) that get infected mail that others do not",
    reload="live",
)
QUARANTINE_DIR = key(
    "policy.quarantine_dir",
    Text(r"/.*", "must be absolute"),
    "/var/lib/avtool/quarantine",
    "where quarantine keeps data file, envelope and verdict (0700, owned by courier)",
    reload="live",
)
HEADER_CLEAN = key(
    "headers.clean",
    Bool(),
    False,
    "add X-Virus-Scanned and X-Virus-Status: Clean to clean mail",
    reload="live",
)
HEADER_RENAME = key(
    "headers.rename_incoming",
    Bool(),
    True,
    "rename incoming X-Virus-* fields to Old-X-Virus-* so that ours can be trusted",
    reload="live",
)


# ---- avtool scan -------------------------------------------------------------------------------
JOBS = key(
    "scan.jobs",
    Int(0, 256),
    0,
    "messages `avtool scan` has clamd scan at once; 0: clamd's MaxThreads, at most 4 per CPU",
    reload="live",
)
LOCK_TIMEOUT = key(
    "scan.lock_timeout",
    Seconds(0.0, 600.0),
    30.0,
    "seconds `avtool scan --move-to` waits for an mbox's fcntl, flock and dot locks, then skips it",
    reload="live",
)


# ---- avtool run-get-ides (mail-driven updates) -------------------------------------------------
UPDATE_INTERVAL = key(
    "updates.min_interval",
    Seconds(0.0, 7 * 86400.0),
    3600.0,
    "run-get-ides: a mail within this many seconds of the last update is kept, tagged SKIPPED "
    "(root's get_ides.sh enforces its own MIN_INTERVAL too)",
    reload="live",
)
UPDATE_SENDERS = key(
    "updates.senders",
    TextList(Text(r"[^\s]+", "must be an address glob")),
    (),
    "run-get-ides: envelope-sender globs that may start an update; empty: any (forgeable!)",
    reload="live",
)


# ---- avtool rescan (retro-scan after signature updates) ---------------------------------------
RESCAN_ROOTS = key(
    "rescan.roots",
    TextList(Text(r"/.*", "must be an absolute path or glob")),
    (),
    "mailboxes `avtool rescan` scans (globs); empty: ~/Maildir of every local user (passwd)",
    reload="live",
)
RESCAN_DAYS = key(
    "rescan.days",
    Int(0, 36500),
    14,
    "`avtool rescan` scans mail delivered within this many days (file time, From_ line); 0: all",
    reload="live",
)
RESCAN_STATE = key(
    "rescan.state",
    Text(r"/.*", "must be absolute"),
    "/var/lib/avtool-rescan/state.sqlite",
    "what `avtool rescan` scanned with which signatures, and its findings (SQLite, 0600)",
    reload="live",
)


# ---- quarantine expiry and notices (issue 17) --------------------------------------------------
QUARANTINE_DAYS = key(
    "policy.quarantine_days",
    Int(0, 36500),
    30,
    "the daily job purges quarantined mail older than this many days; 0: keep it for ever",
    reload="live",
)
SENDMAIL = key(
    "notify.sendmail",
    Text(r"/.*", "must be absolute"),
    "/usr/sbin/sendmail",
    "Courier's sendmail: notices and released mail are submitted through it",
    reload="live",
)
NOTIFY_POSTMASTER = key(
    "notify.postmaster",
    TextList(Text(r"[^\s<>,;]+", "must be an address (a bare name is on the local domain)")),
    ("postmaster",),
    "who gets a notice per quarantined or dropped message and the digest; empty: nobody",
    reload="live",
)
NOTIFY_RECIPIENTS = key(
    "notify.recipients",
    Bool(),
    False,
    "tell each recipient of a held message its id and whom to ask (never the sender)",
    reload="live",
)
NOTIFY_DIGEST = key(
    "notify.digest",
    Choice(("off", "daily")),
    "off",
    "daily: the daily job mails notify.postmaster what was quarantined since the last digest",
    reload="live",
)
NOTIFY_TEMPLATES = key(
    "notify.templates",
    Text(r"(/.*)?", "must be absolute, or empty"),
    "",
    "a dir of notice templates replacing the shipped ones (share/notices/); empty: shipped",
    reload="live",
)
NOTIFY_TIMEOUT = key(
    "notify.timeout",
    Seconds(1.0, 3600.0),
    60.0,
    "seconds sendmail may take to accept a notice before it is killed",
    reload="live",
)


# ---- avtool rescan: what is done with a finding (issue 18) ------------------------------------
RESCAN_ACTION = key(
    "rescan.action",
    Choice(("report", "quarantine")),
    "report",
    "what `avtool rescan` does with an infected message: report it, or (as --quarantine) move "
    "it into the quarantine, from where `avtool quarantine release` puts it back",
    reload="live",
)
RESCAN_NOTIFY_OWNERS = key(
    "rescan.notify_owners",
    Bool(),
    False,
    "`avtool rescan --notify` also tells each mailbox's owner what was found in it",
    reload="live",
)


# ---- the registry: every key above, in the order `avtool config` and the sample file show ---
KEYS = table((
    BACKENDS, BALANCE, CONNECT_TIMEOUT, SCAN_TIMEOUT, RETRY_AFTER, TRANSFER, MAX_SIZE, VERBOSITY,
    FILTER_DIR, COURIER_DIR, SPOOL_DIR, PID_FILE, PIPE, MAX_SCANS, MAX_CONNECTIONS,
    MESSAGE_TIMEOUT, READ_TIMEOUT, DRAIN_TIMEOUT, MANUAL_START, DRY_RUN, INFECTED, PUA,
    HEURISTICS, PATTERNS_PASS, PATTERNS_REJECT, PATTERNS_DROP, PATTERNS_QUARANTINE,
    PATTERNS_DEFER, REJECT_TEXT, UNCHECKED, FAILED, SKIP_AUTHENTICATED, SKIP_RELAY_CLIENTS,
    PASS_RECIPIENTS, QUARANTINE_DIR, HEADER_CLEAN, HEADER_RENAME, JOBS, LOCK_TIMEOUT,
    UPDATE_INTERVAL, UPDATE_SENDERS,
    RESCAN_ROOTS, RESCAN_DAYS, RESCAN_STATE,
    QUARANTINE_DAYS, SENDMAIL, NOTIFY_POSTMASTER, NOTIFY_RECIPIENTS, NOTIFY_DIGEST,
    NOTIFY_TEMPLATES, NOTIFY_TIMEOUT,
    RESCAN_ACTION, RESCAN_NOTIFY_OWNERS,
))  # fmt: skip
