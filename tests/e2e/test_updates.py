"""Mail-driven updates, end to end with the real parts: share/install-updates.sh puts the script
and the sudoers drop-in in place, a test user's maildrop xfilters an announcement through
``avtool run-get-ides``, Debian's sudo runs the installed get_ides.sh as root, a stub freshclam
(this machine is offline) adds a signature, clamscan checks the database, and ``avtool sig``
makes a running ``avtool serve --debug`` reload its real clamd, which then knows the signature.

Needs root, sudo, visudo and maildrop (tests/setup.sh installs them). The system files it
touches (/usr/local/lib/avtool/get_ides.sh, /etc/sudoers.d/avtool-get-ides,
/etc/avtool/get_ides.conf) are put back as they were afterwards, and the test user removed.
"""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from avtool.updates import SCRIPT, STATE_DIR
from tests.support.clamd_harness import ClamdServer
from tests.support.serve import Daemon, config_for, mail, start_daemon

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "share" / "install-updates.sh"
USER = "avtupdate"
HOME = Path("/var/lib/avtool-e2e/avtupdate")
DROP_IN = Path("/etc/sudoers.d/avtool-get-ides")
CONF = Path("/etc/avtool/get_ides.conf")
# sudo mails root about each refused command (the tests below make several); on the test
# Courier that mail bounces to the sender, the update mailbox, whose maildrop would then run
# updates of its own in the middle of a test. A real postmaster reads them instead.
NO_MAIL = Path("/etc/sudoers.d/zz-avtool-e2e-no-mail")
STUB_DIR = Path("/var/lib/avtool-e2e/stub-bin")
# What the stub freshclam adds: a body signature on a marker no message has by chance.
MARKER = b"AVTOOL-E2E-NEW-SIGNATURE-7f3a"
NEW_SIG = f"Avtool.E2E.NewSig:0:*:{MARKER.hex()}\n"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (installs into /usr/local/lib and /etc/sudoers.d)"
    for tool in ("sudo", "visudo", "maildrop", "maildirmake", "runuser", "clamscan"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (tests/setup.sh installs it)"
    return None


@dataclass
class Installed:
    python: Path  # the Python that runs avtool, usable by the test user


def _run(*cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def installed(courier_session: float) -> Iterator[Installed]:
    """Installed for the module. Courier's session fixture holds the machine-wide e2e lock
    (tests/e2e/harness.py): the files installed here are the machine's, like its Courier."""
    if reason := _missing():
        pytest.skip(reason)
    saved = {p: p.read_bytes() for p in (SCRIPT, DROP_IN, CONF) if p.exists()}
    had_state = STATE_DIR.exists()
    _run("userdel", "-r", USER)  # left by an interrupted run: start from nothing
    shutil.rmtree(HOME, ignore_errors=True)
    # avtool as the test user can run it: this checkout's venv, when others can read it.
    python = Path(sys.executable)
    venv_avtool = python.parent / "avtool"
    try:
        done = _run(
            "bash", str(INSTALL), "--user", USER, "--mailbox", "--home", str(HOME),
            "--avtool", str(venv_avtool),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        probe = _run("runuser", "-u", USER, "--", str(python), "-c", "import avtool, typer")
        if probe.returncode != 0:
            pytest.skip(f"user {USER} cannot run this checkout's avtool: {probe.stderr.strip()}")
        NO_MAIL.write_text(f"Defaults:{USER} !mail_badpass, !mail_no_user, !mail_no_perms\n")
        NO_MAIL.chmod(0o440)
        assert _run("visudo", "-cf", str(NO_MAIL)).returncode == 0
        yield Installed(python)
    finally:
        NO_MAIL.unlink(missing_ok=True)
        for path in (SCRIPT, DROP_IN, CONF):
            if path in saved:
                path.write_bytes(saved[path])
            else:
                path.unlink(missing_ok=True)
        _run("userdel", "-r", USER)
        shutil.rmtree(HOME, ignore_errors=True)
        shutil.rmtree(STUB_DIR, ignore_errors=True)
        if not had_state:
            shutil.rmtree(STATE_DIR, ignore_errors=True)


def test_the_script_is_root_s_and_0755_nothing_setuid(installed: Installed) -> None:
    st = SCRIPT.lstat()
    assert stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid) == (0, 0)
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert SCRIPT.read_bytes() == (REPO / "share" / "get_ides.sh").read_bytes()
    for directory in SCRIPT.parents:  # nobody but root can swap it
        d = directory.stat()
        assert d.st_uid == 0 and not d.st_mode & (stat.S_IWGRP | stat.S_IWOTH), directory
    for path in (SCRIPT, DROP_IN):
        assert not path.stat().st_mode & (stat.S_ISUID | stat.S_ISGID), path


def test_the_drop_in_passes_visudo_and_is_0440(installed: Installed) -> None:
    st = DROP_IN.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o440)
    assert _run("visudo", "-cf", str(DROP_IN)).returncode == 0
    shipped = _run("visudo", "-cf", str(REPO / "share" / "sudoers.avtool-get-ides"))
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    assert f"User_Alias AVTOOL_UPDATERS = {USER}\n" in DROP_IN.read_text()


def test_the_mailbox_filters_through_run_get_ides(installed: Installed) -> None:
    mailfilter = HOME / ".mailfilter"
    st = mailfilter.stat()
    assert st.st_uid == pwd.getpwnam(USER).pw_uid and stat.S_IMODE(st.st_mode) == 0o600
    text = mailfilter.read_text()
    assert 'SHELL="/bin/sh"' in text  # else maildrop runs xfilter with nologin
    assert f'  xfilter "{installed.python.parent / "avtool"} run-get-ides -t 600"' in text
    assert 'if ($FROM ne "" && $FROM ne "MAILER-DAEMON")' in text  # not for a bounce
    assert (HOME / ".courier").read_text() == '| /usr/bin/maildrop -f "$SENDER"\n'
    assert (HOME / "Maildir" / "new").is_dir()


def test_sudo_lists_only_the_script_for_the_mailbox_user(installed: Installed) -> None:
    listing = _run("sudo", "-l", "-U", USER).stdout
    rules = listing.split("may run the following commands", 1)[1].splitlines()[1:]
    commands = " ".join(line.strip() for line in rules if line.strip())
    assert commands == f'(root) NOPASSWD: {SCRIPT} "", {SCRIPT} new'


@pytest.mark.parametrize(
    "argv",
    [
        ["/bin/true"],
        [str(SCRIPT), "--", "sh"],  # another argument than none or "new"
        ["-u", "courier", str(SCRIPT)],  # another target user
        ["-E", str(SCRIPT)],  # keep the caller's environment
        ["sh", "-c", str(SCRIPT)],
    ],
)
def test_the_mailbox_user_can_run_nothing_else(installed: Installed, argv: list[str]) -> None:
    done = _run("runuser", "-u", USER, "--", "sudo", "-n", *argv)
    assert done.returncode != 0, done.stdout


def _announce(installed: Installed, subject: str) -> email.message.EmailMessage:
    """Deliver one announcement to the test user with maildrop; the message it keeps."""
    maildir = HOME / "Maildir"
    for sub in ("new", "cur"):
        for old in (maildir / sub).iterdir():
            old.unlink()
    announcement = (
        f"From: clamav-virusdb@example.test\nTo: {USER}@example.test\nSubject: {subject}\n"
        "\nClamAV database updated (daily: 27001).\n; rm -rf / $(reboot) `id`\n"
    )
    done = _run(
        "runuser", "-u", USER, "--", "env", "-i", f"HOME={HOME}", "PATH=/usr/bin:/bin",
        "maildrop", "-f", "clamav-virusdb@example.test", input=announcement,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    kept = list((maildir / "new").iterdir())
    assert len(kept) == 1, [p.read_bytes()[:600] for p in kept]
    parsed = email.message_from_bytes(kept[0].read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


@pytest.fixture
def scanner(installed: Installed) -> Iterator[tuple[ClamdServer, Daemon]]:
    """A clamd of its own (its database is updated by the test) and serve --debug on it."""
    directory = Path(tempfile.mkdtemp(prefix="avu", dir="/tmp"))
    directory.chmod(0o755)
    clamd = ClamdServer(directory).start()
    daemon = start_daemon(config_for(str(clamd.unix_socket)))
    try:
        yield clamd, daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
        clamd.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _set_up_with_empty_mailbox(installed: Installed, clamd: ClamdServer, daemon: Daemon) -> None:
    """The stub freshclam, the settings file, and the update mailbox emptied (mail by SMTP)."""
    _stub_freshclam(clamd.db_dir)
    _write_conf(clamd, daemon, installed.python)
    for sub in ("new", "cur"):
        for old in (HOME / "Maildir" / sub).iterdir():
            old.unlink()


def _stub_freshclam(db_dir: Path, fail: bool = False) -> None:
    STUB_DIR.mkdir(parents=True, exist_ok=True)
    STUB_DIR.chmod(0o755)
    stub = STUB_DIR / "freshclam"
    body = "echo 'ERROR: Can not connect to the mirror' >&2; exit 1" if fail else (
        f"printf '%s' '{NEW_SIG.strip()}' > '{db_dir}/e2e-update.ndb'\n"
        "echo 'daily.cld updated (version: 27001, sigs: 1, f-level: 90, builder: stub)'"
    )  # fmt: skip
    stub.write_text(f"#!/bin/sh\n# stub freshclam for the offline test machine\n{body}\n")
    stub.chmod(0o755)


def _stub_clamscan() -> None:
    """A clamscan first on PATH that says who runs it, then runs the real one."""
    real = shutil.which("clamscan", path="/usr/bin:/bin")
    STUB_DIR.mkdir(parents=True, exist_ok=True)
    STUB_DIR.chmod(0o755)
    stub = STUB_DIR / "clamscan"
    stub.write_text(f'#!/bin/sh\necho "check uid: $(id -u)"\nexec {real} "$@"\n')
    stub.chmod(0o755)


def _write_conf(clamd: ClamdServer, daemon: Daemon, python: Path) -> None:
    reload = (
        f"cd '{daemon.workdir}' && '{python}' -m avtool sig -f '{daemon.workdir}/avtool.conf' "
        f"-p {daemon.proc.pid} -t 60 reload virus"
    )
    _settings(f'DB_DIR="{clamd.db_dir}"\nRELOAD_COMMAND="{reload}"\n')


def _rescan_after_update(clamd: ClamdServer, python: Path) -> Path:
    """RESCAN_COMMAND: this checkout's avtool rescans a Maildir holding a message delivered
    before the update, which the update's signature names, and reports to a sendmail
    stand-in. The delivered message's path."""
    base = Path(tempfile.mkdtemp(prefix="avu-rescan", dir="/tmp"))
    base.chmod(0o755)
    md = base / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    delivered = md / "new" / "1700000000.M1P1.e2e"
    delivered.write_bytes(b"From: numbers@example.test\n\nLook: " + MARKER + b"\n")  # no Subject:
    (base / "outbox").mkdir()
    stub = base / "sendmail"
    stub.write_text(f"#!/bin/sh\ncat > $(mktemp {base}/outbox/mail.XXXXXX)\n")
    stub.chmod(0o755)
    sets = {
        "clamd.backends": str(clamd.unix_socket),
        "rescan.state": str(base / "state" / "rescan.sqlite"),
        "notify.sendmail": str(stub),
        "notify.postmaster": "postmaster@example.test",
    }
    args = " ".join(f"--set {k}={v}" for k, v in sets.items())
    command = f"{python} -m avtool rescan --notify --quiet {args} {md}"
    CONF.write_text(CONF.read_text() + f'RESCAN_COMMAND="{command}"\n')
    return delivered


def _settings(text: str) -> None:
    """/etc/avtool/get_ides.conf with the stub dir first on PATH, and no update run yet (the
    script's stamp removed: each test starts outside the interval). No rescan of the machine's
    mailboxes unless ``text`` sets RESCAN_COMMAND."""
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(f'PATH="{STUB_DIR}:$PATH"\nRESCAN_COMMAND=""\n{text}')
    (STATE_DIR / "last").unlink(missing_ok=True)


def _verdict(daemon: Daemon, until_rejected: float = 0.0) -> str:
    """The daemon's reply to a message with the marker; with ``until_rejected``, asked again
    for up to that many seconds: clamd activates a reloaded database in the background, and
    with test signatures (no version number) `sig` cannot see the moment it does."""
    deadline = time.monotonic() + until_rejected
    while True:
        data, ctls = daemon.spool.message(mail(body=b"Look: " + MARKER + b"\n"))
        reply = daemon.filter(data, ctls)
        if reply.startswith("5") or time.monotonic() >= deadline:
            return reply
        time.sleep(0.2)


def test_an_announcement_updates_checks_and_reloads(
    installed: Installed, scanner: tuple[ClamdServer, Daemon]
) -> None:
    clamd, daemon = scanner
    _stub_freshclam(clamd.db_dir)
    _stub_clamscan()
    _write_conf(clamd, daemon, installed.python)
    delivered = _rescan_after_update(clamd, installed.python)
    assert _verdict(daemon).startswith("200")  # the signature is not known yet

    kept = _announce(installed, "ClamAV daily 27001")

    assert kept["Subject"] == "[OK] ClamAV daily 27001"
    body = kept.get_content()
    # then the rescan (issue 18), as root: the mail delivered before the update that the new
    # signature names is in the mail, and its report went to the postmaster
    assert "== rescanning delivered mail: " in body, body
    assert re.search(rf"INFECTED .*{delivered.name}.*Avtool\.E2E\.NewSig", body), body
    reports = sorted((delivered.parents[2] / "outbox").iterdir())
    assert len(reports) == 1 and b"Avtool.E2E.NewSig" in reports[0].read_bytes()
    shutil.rmtree(delivered.parents[2], ignore_errors=True)
    # the check ran clamscan as clamav, not root, and the real one loaded the new database
    assert f"check uid: {pwd.getpwnam('clamav').pw_uid}\n" in body, body
    assert "== updating" in body and "daily.cld updated (version: 27001" in body
    assert "== checking that the database loads" in body
    assert "virus:" in body  # avtool sig's answer: each clamd's reload
    assert "subject:" not in body.lower()
    assert kept["From"] == "clamav-virusdb@example.test"
    verdict = _verdict(daemon, until_rejected=10)  # the running filter now knows it
    assert verdict.startswith("5") and "Avtool.E2E.NewSig" in verdict


def test_a_failed_update_is_still_delivered_tagged(
    installed: Installed, scanner: tuple[ClamdServer, Daemon]
) -> None:
    clamd, daemon = scanner
    _stub_freshclam(clamd.db_dir, fail=True)
    _write_conf(clamd, daemon, installed.python)
    kept = _announce(installed, "ClamAV daily 27002")
    assert kept["Subject"] == "[FAILED update] ClamAV daily 27002"
    assert "== updating" in kept.get_content()
    assert _verdict(daemon).startswith("200")  # nothing was reloaded


def test_courier_delivers_an_announcement_through_maildrop(
    installed: Installed, scanner: tuple[ClamdServer, Daemon], courier: None
) -> None:
    """The whole way a real announcement takes: SMTP into Courier, local delivery through the
    .courier file that --mailbox wrote, maildrop, run-get-ides, sudo, the update."""
    from tests.e2e import harness

    clamd, daemon = scanner
    _set_up_with_empty_mailbox(installed, clamd, daemon)
    message = harness.make_message(
        "ClamAV daily 27003", "ClamAV database updated.\n", to=[f"{USER}@{harness.DOMAIN}"]
    )
    code, text = harness.send(message, recipients=[f"{USER}@{harness.DOMAIN}"])
    assert code == 250, text
    kept = harness.wait_for_mail(1, timeout=60, user=USER)
    parsed = email.message_from_bytes(kept[0].read_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == "[OK] ClamAV daily 27003", harness.log_tail()
    assert _verdict(daemon, until_rejected=10).startswith("5")


def test_run_as_another_user_with_dash_d(installed: Installed) -> None:
    """--run-as clamav: the drop-in names (clamav : clamav), and run-get-ides -D runs the
    script as that user (the settings make the update step print who it runs as)."""
    try:
        done = _run("bash", str(INSTALL), "--user", USER, "--run-as", "clamav")
        assert done.returncode == 0, done.stderr
        listing = _run("sudo", "-l", "-U", USER).stdout
        assert f'(clamav : clamav) NOPASSWD: {SCRIPT} "", {SCRIPT} new' in listing
        _settings('UPDATE_COMMAND="id -un"\nCHECK_COMMAND=true\nRELOAD_COMMAND=true\n')
        assert STATE_DIR.stat().st_uid == pwd.getpwnam("clamav").pw_uid  # the script's own
        clamav = pwd.getpwnam("clamav")
        out = _run(
            "runuser", "-u", USER, "--", str(installed.python), "-m", "avtool", "run-get-ides",
            "-D", f"{clamav.pw_uid}/{clamav.pw_gid}", input="Subject: db\n\nupdated\n",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "Subject: [OK] db\n" in out.stdout and "\nclamav\n" in out.stdout
        as_root = _run("runuser", "-u", USER, "--", "sudo", "-n", "-u", "root", str(SCRIPT))
        assert as_root.returncode != 0  # root is no longer allowed
    finally:
        restored = _run("bash", str(INSTALL), "--user", USER)
        assert restored.returncode == 0, restored.stderr
        assert STATE_DIR.stat().st_uid == 0


def test_a_bounce_is_kept_without_an_update(
    installed: Installed, scanner: tuple[ClamdServer, Daemon], courier: None
) -> None:
    """Mail with an empty envelope sender (a bounce) reaches the mailbox untouched: no update
    runs, no tag."""
    from tests.e2e import harness

    clamd, daemon = scanner
    _set_up_with_empty_mailbox(installed, clamd, daemon)
    rcpt = f"{USER}@{harness.DOMAIN}"
    code, text = harness.send(
        harness.make_message("Undelivered mail", to=[rcpt]), sender="", recipients=[rcpt]
    )
    assert code == 250, text
    kept = harness.wait_for_mail(1, timeout=60, user=USER)
    parsed = email.message_from_bytes(kept[0].read_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == "Undelivered mail"
    assert not (clamd.db_dir / "e2e-update.ndb").exists()  # freshclam never ran


# ---- forged announcements: what they can make root do ------------------------------------------
RUNS = STUB_DIR / "runs"


def _counting_freshclam(seconds: float) -> None:
    """A freshclam that notes each run (as root, in the stub dir) and takes ``seconds``."""
    STUB_DIR.mkdir(parents=True, exist_ok=True)
    STUB_DIR.chmod(0o755)
    RUNS.unlink(missing_ok=True)
    stub = STUB_DIR / "freshclam"
    stub.write_text(
        f"#!/bin/sh\necho $$ >> '{RUNS}'\nsleep {seconds}\necho 'daily.cld is up to date'\n"
    )
    stub.chmod(0o755)


def _runs() -> list[str]:
    return RUNS.read_text().split() if RUNS.exists() else []


def _clear_mailbox() -> None:
    for sub in ("new", "cur"):
        for old in (HOME / "Maildir" / sub).iterdir():
            old.unlink()


def _maildrop(sender: str, subject: str) -> subprocess.Popen[str]:
    """One delivery as Courier makes it (the .courier file: maildrop -f SENDER), started."""
    with tempfile.TemporaryFile("w+") as message:
        message.write(f"From: {sender}\nTo: {USER}@example.test\nSubject: {subject}\n\nx\n")
        message.seek(0)
        return subprocess.Popen(
            ["runuser", "-u", USER, "--", "env", "-i", f"HOME={HOME}", "PATH=/usr/bin:/bin",
             "maildrop", "-f", sender],
            stdin=message, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip


def _kept_subjects() -> list[str]:
    kept = [p for sub in ("new", "cur") for p in (HOME / "Maildir" / sub).iterdir()]
    subjects = []
    for path in kept:
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        subjects.append(str(parsed["Subject"]))
    return sorted(subjects)


def _kept_bodies() -> str:
    return "".join(
        p.read_text(errors="replace")
        for sub in ("new", "cur")
        for p in (HOME / "Maildir" / sub).iterdir()
    )


def test_concurrent_forged_announcements_make_one_update(installed: Installed) -> None:
    """Five deliveries at once (Courier runs several): one update runs; every mail is kept,
    the others tagged SKIPPED; every maildrop exits 0 (nothing deferred, nothing redelivered)."""
    _counting_freshclam(3)
    _settings("CHECK_COMMAND=true\nRELOAD_COMMAND=true\n")
    _clear_mailbox()
    procs = [_maildrop(f"forger{i}@example.com", f"forged {i}") for i in range(5)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert len(_runs()) == 1
    subjects = _kept_subjects()
    assert len(subjects) == 5, subjects
    assert sum(s.startswith("[OK] forged ") for s in subjects) == 1, subjects
    assert sum(s.startswith("[SKIPPED ") for s in subjects) == 4, subjects


def test_a_mail_within_the_interval_is_skipped_and_root_enforces_it(
    installed: Installed,
) -> None:
    _counting_freshclam(0)
    _settings("CHECK_COMMAND=true\nRELOAD_COMMAND=true\n")
    _clear_mailbox()
    first = _maildrop("forger@example.com", "first")
    assert first.wait(120) == 0
    second = _maildrop("forger@example.com", "second")
    assert second.wait(120) == 0  # not an error: maildrop would defer, Courier redeliver
    assert _kept_subjects() == ["[OK] first", "[SKIPPED interval] second"]
    assert "skipped: last update at " in _kept_bodies()
    # The mailbox user cannot go around the xfilter: sudo runs the script, which says no.
    direct = _run("runuser", "-u", USER, "--", "sudo", "-n", str(SCRIPT), input="x\n")
    assert direct.returncode == 0 and direct.stdout.splitlines()[-1] == "subject: SKIPPED interval"
    assert "skipped: last update at " in direct.stdout
    assert len(_runs()) == 1


def test_a_sender_outside_the_allowlist_starts_no_update(installed: Installed) -> None:
    _counting_freshclam(0)
    _settings("CHECK_COMMAND=true\nRELOAD_COMMAND=true\n")
    _clear_mailbox()
    conf_dir = HOME / ".config" / "avtool"  # the mailbox user's own avtool config
    owner = pwd.getpwnam(USER)
    for path in (HOME / ".config", conf_dir):
        path.mkdir(exist_ok=True)
        os.chown(path, owner.pw_uid, owner.pw_gid)
    (conf_dir / "avtool.conf").write_text('[updates]\nsenders = ["*@lists.clamav.net"]\n')
    try:
        forged = _maildrop("forger@example.com", "forged")
        assert forged.wait(120) == 0
        assert _runs() == []
        assert _kept_subjects() == ["[SKIPPED sender] forged"]
        allowed = _maildrop("announce@lists.clamav.net", "real")
        assert allowed.wait(120) == 0
        assert len(_runs()) == 1 and "[OK] real" in _kept_subjects()
    finally:
        shutil.rmtree(HOME / ".config", ignore_errors=True)


def test_a_hanging_update_under_sudo_ends_without_a_second_run(installed: Installed) -> None:
    """freshclam hangs. Through sudo the script is root's: the xfilter cannot kill it; it stops
    waiting at its timeout and keeps the mail tagged [TIMEOUT], exit 0. Had it failed, maildrop
    would defer and Courier deliver again: that second run (here: the xfilter run again at
    once) finds the lock or the stamp and runs nothing. The script's own RUN_TIMEOUT then
    kills the hung step."""
    _counting_freshclam(120)
    _settings("RUN_TIMEOUT=8\nCHECK_COMMAND=true\nRELOAD_COMMAND=true\n")
    xfilter = ["runuser", "-u", USER, "--", "env", "-i", f"HOME={HOME}", "PATH=/usr/bin:/bin",
               "FROM=forger@example.com", str(installed.python), "-m", "avtool", "run-get-ides",
               "-t", "2"]  # fmt: skip
    started = time.monotonic()
    first = _run(*xfilter, input="Subject: daily\n\nx\n")
    assert time.monotonic() - started < 15
    assert first.returncode == 0, first.stderr
    assert "Subject: [TIMEOUT] daily" in first.stdout and "Traceback" not in first.stderr
    again = _run(*xfilter, input="Subject: daily\n\nx\n")  # what a redelivery would do
    assert again.returncode == 0, again.stderr
    assert "Subject: [SKIPPED " in again.stdout
    (pid,) = _runs()
    assert Path(f"/proc/{pid}").exists()  # still hanging, as root
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists()  # RUN_TIMEOUT: the script killed it
    assert len(_runs()) == 1
