"""The Debian package (share/build-deb.sh, debian/), built from this checkout and driven through
the real Courier: lintian, apt-get install, the command, its man pages and completions, the
filter enabled as an admin does and a clean and an EICAR mail through it, an upgrade to a
rebuilt package while mail flows, remove, purge, and nothing left but what the purge said it
keeps.

The package is built once per session (two versions: the second is the upgrade). It owns paths
that share/install.sh (tests/e2e/test_avtool.py) also writes: /usr/lib/courier/filters/avtool,
/etc/courier/filters/avtool.conf, /var/lib/avtool. They are moved aside for the test and put
back afterwards, so that the other e2e tests find the machine as they left it.
"""

from __future__ import annotations

import base64
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from avtool import __version__
from tests.e2e import harness
from tests.support.clamd_harness import ClamdServer

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
WRAPPER = Path("/usr/lib/courier/filters/avtool")
CONF = Path("/etc/courier/filters/avtool.conf")
STATE = Path("/var/lib/avtool")
QUARANTINE = STATE / "quarantine"
ACTIVE = Path("/etc/courier/filters/active/avtool")
SOCKET = Path("/var/lib/courier/allfilters/avtool")
PID_FILE = Path("/run/courier/avtool.pid")
# What the package and share/install.sh both write: moved aside (same dir, so a rename keeps
# owner and mode) and back.
SHARED = (WRAPPER, CONF, STATE)
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# apt must not need the network for the local .deb: any download goes to a dead proxy.
APT = [
    "apt-get",
    "-y",
    "-q",
    "--no-install-recommends",
    "-o", "DPkg::Lock::Timeout=300",
    "-o", "Acquire::http::Proxy=http://127.0.0.1:9",
    "-o", "Acquire::https::Proxy=http://127.0.0.1:9",
]  # fmt: skip


def _missing() -> str | None:
    if reason := harness.unavailable():
        return reason
    for tool in ("apt-get", "dpkg-buildpackage", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (not Debian?)"
    return None


def run(*cmd: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ, DEBIAN_FRONTEND="noninteractive", **env)
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=environ, check=False
    )


@dataclass(frozen=True)
class Debs:
    first: Path
    upgrade: Path  # the same tree rebuilt with a higher version


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Debs:
    """Both packages, built once per session with share/build-deb.sh."""
    if reason := _missing():
        pytest.skip(f"e2e: {reason}")
    out = tmp_path_factory.mktemp("debs")

    def build(*options: str) -> Path:
        done = run("bash", str(REPO / "share" / "build-deb.sh"), "--out", str(out), *options)
        assert done.returncode == 0, done.stdout + done.stderr
        return Path(done.stdout.strip().splitlines()[-1])

    first = build()
    version = first.name.split("_")[1]  # avtool_VERSION_ARCH.deb
    return Debs(first, build("--version", f"{version}+e2e1"))


def test_lintian_reports_no_error_and_no_warning(debs: Debs) -> None:
    """Each remaining warning is fixed or explained in debian/avtool.lintian-overrides."""
    if shutil.which("lintian") is None:
        run(*APT[:4], "install", "lintian")  # build-deb.sh --lintian would do the same
    done = run("lintian", "--fail-on", "error,warning", str(debs.first))
    assert done.returncode == 0, done.stdout + done.stderr
    assert not re.search(r"^[EW]: ", done.stdout, re.M), done.stdout


@pytest.fixture
def machine(courier: None) -> Iterator[None]:
    """The paths the package shares with share/install.sh moved aside, and put back after the
    package is purged (whatever happened in between)."""
    if run("dpkg-query", "-W", "avtool").returncode == 0:
        run("dpkg", "--purge", "avtool")  # left by an interrupted run
    saved = {p: p.with_name(f".{p.name}.e2e-deb-saved") for p in SHARED}
    for path, aside in saved.items():
        assert not aside.exists(), f"{aside} is left from an interrupted run: put it back by hand"
        if path.exists() or path.is_symlink():
            path.rename(aside)
    try:
        yield
    finally:
        if ACTIVE.is_symlink():
            harness.filterctl("stop", "avtool", timeout=15)
        if run("dpkg-query", "-W", "avtool").returncode == 0:
            run("dpkg", "--purge", "avtool")
        shutil.rmtree(STATE, ignore_errors=True)  # the test's own; the machine's is aside
        for path, aside in saved.items():
            if aside.exists() or aside.is_symlink():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
                aside.rename(path)


@pytest.fixture
def clamd(machine: None) -> Iterator[ClamdServer]:
    """A clamd of the test's own, which user courier can reach (the package's default is the
    system one, which this machine may not run)."""
    directory = Path(tempfile.mkdtemp(prefix="avdeb", dir="/tmp"))
    directory.chmod(0o755)
    server = ClamdServer(directory).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def attachment(payload: bytes, subject: str) -> bytes:
    body = (
        "--b1\nContent-Type: text/plain\n\nSee attached.\n--b1\n"
        "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
        f"{base64.encodebytes(payload).decode()}--b1--\n"
    )
    headers = [("MIME-Version", "1.0"), ("Content-Type", 'multipart/mixed; boundary="b1"')]
    return harness.make_message(subject, body, headers=headers)


def courier_pid() -> int:
    return int(PID_FILE.read_text())


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


class Senders:
    """Mail during the upgrade: threads sending a clean and an EICAR message in turn, each
    reply recorded as (kind, code, subject)."""

    def __init__(self, threads: int = 2) -> None:
        self.results: list[tuple[str, int, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            kind = "eicar" if i % 2 else "clean"
            subject = f"flow-{n}-{i}-{kind}"
            message = (
                attachment(EICAR, subject) if kind == "eicar" else harness.make_message(subject)
            )
            try:
                code, _ = harness.send(message, timeout=30)
            except (OSError, EOFError) as e:  # smtplib errors are OSErrors
                code = 0
                subject += f" ({e!r})"
            self.results.append((kind, code, subject))

    def __enter__(self) -> Senders:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def shipped_paths(deb: Path) -> list[Path]:
    """The files and links in the package (directories are shared with other packages)."""
    listing = run("dpkg-deb", "-c", str(deb)).stdout
    paths = []
    for line in listing.splitlines():
        if line.startswith("d"):
            continue
        name = line.split(None, 5)[5].split(" -> ")[0]
        paths.append(Path(name.removeprefix(".")))
    return paths


def test_install_enable_upgrade_while_mail_flows_remove_purge(
    debs: Debs, clamd: ClamdServer
) -> None:
    # --- install: nothing enabled behind the admin's back, everything in place --------------
    done = run(*APT, "install", str(debs.first))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "Courier does NOT use it yet" in out and "filterctl start avtool" in out
    assert not ACTIVE.is_symlink() and not SOCKET.exists()

    courier_env = ["runuser", "-u", "courier", "--", "env", "-i", "PATH=/usr/bin:/bin"]
    done = run(*courier_env, "/usr/bin/avtool", "--version")  # as Courier starts it
    assert done.returncode == 0 and done.stdout == f"avtool {__version__}\n", done

    from avtool.cli.app import app

    commands = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    for page in ["avtool", *(f"avtool-{c}" for c in commands)]:
        where = run("man", "-w", page).stdout.strip()
        assert where == f"/usr/share/man/man1/{page}.1.gz", page
        shown = run("man", "--warnings", "-l", where, MANWIDTH="100")
        assert shown.returncode == 0 and shown.stderr == "", (page, shown.stderr)
    assert "--move-to" in run("man", "-l", "/usr/share/man/man1/avtool-scan.1.gz").stdout
    updates = run("man", "-l", "/usr/share/man/man1/avtool-run-get-ides.1.gz", MANWIDTH="200")
    assert "/usr/lib/avtool/get_ides.sh" in updates.stdout  # the package's, not a checkout's
    assert "/usr/local" not in updates.stdout

    for completion in (
        "/usr/share/bash-completion/completions/avtool",
        "/usr/share/zsh/vendor-completions/_avtool",
        "/usr/share/fish/vendor_completions.d/avtool.fish",
    ):
        assert Path(completion).is_file(), completion
    complete = (
        "source /usr/share/bash-completion/completions/avtool; "
        "COMP_WORDS=(avtool sc); COMP_CWORD=1; _avtool; echo ${COMPREPLY[@]}"
    )
    assert run("bash", "-c", complete).stdout.split() == ["scan"]

    assert "exec /usr/bin/avtool serve" in WRAPPER.read_text()
    assert WRAPPER.stat().st_mode & 0o111 == 0o111
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "avtool").stdout
    assert str(CONF) in conffiles and "/etc/cron.d/avtool" in conffiles
    assert "/etc/cron.d/avtool-rescan " in conffiles  # the hourly rescan (issue 18)
    courier_ids = pwd.getpwnam("courier").pw_uid, pwd.getpwnam("courier").pw_gid
    for path, mode in ((STATE, 0o750), (QUARANTINE, 0o700)):
        st = path.lstat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == mode, path
        assert (st.st_uid, st.st_gid) == courier_ids, path
    script = Path("/usr/lib/avtool/get_ides.sh")
    assert script.stat().st_uid == 0 and stat.S_IMODE(script.stat().st_mode) == 0o755
    for name in ("avtool-get-ides", "avtool-sig"):
        drop_in = Path("/usr/share/avtool/sudoers") / name
        assert run("visudo", "-cf", str(drop_in)).returncode == 0, name
        assert "/usr/local/" not in drop_in.read_text()
    assert "/usr/lib/avtool/get_ides.sh" in (drop_in.parent / "avtool-get-ides").read_text()
    assert not any(Path("/etc/sudoers.d").glob("avtool*")), "sudoers enabled behind our back"
    # A checkout's installer beside the package: the package's script, nothing copied.
    local = Path("/usr/local/lib/avtool/get_ides.sh")  # a checkout install's, maybe there
    local_was = (local.stat().st_ino, local.stat().st_mtime_ns) if local.exists() else None
    done = run("bash", str(REPO / "share/install-updates.sh"), "--user", "avtool-e2e-updates")
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "the Debian package's /usr/lib/avtool/get_ides.sh" in done.stdout
        local_is = (local.stat().st_ino, local.stat().st_mtime_ns) if local.exists() else None
        assert local_is == local_was, "the installer copied its script beside the package's"
        rule = Path("/etc/sudoers.d/avtool-get-ides").read_text().splitlines()[-1]
        assert rule.endswith(f'NOPASSWD: {script} "", {script} new'), rule
    finally:
        Path("/etc/sudoers.d/avtool-get-ides").unlink(missing_ok=True)
    daily = run("/usr/lib/avtool/daily-check")
    assert (daily.returncode, daily.stdout) == (0, ""), daily  # not enabled: nothing to check
    job = Path("/usr/lib/avtool/rescan-job")
    assert job.stat().st_uid == 0 and stat.S_IMODE(job.stat().st_mode) == 0o755
    assert "AVTOOL=/usr/bin/avtool" in job.read_text() and "/usr/local/" not in job.read_text()
    assert (
        Path("/lib/systemd/system/avtool-rescan.timer").exists()
        or Path("/usr/lib/systemd/system/avtool-rescan.timer").exists()
    )
    hourly = run(str(job))
    assert (hourly.returncode, hourly.stdout) == (0, ""), hourly  # not enabled: no rescan

    # --- enabled as the admin does: a clean and an EICAR mail through Courier ---------------
    config = f'[clamd]\nbackends = ["{clamd.unix_socket}"]\n[headers]\nclean = true\n'
    CONF.write_text(config)
    harness.filterctl("start", "avtool", timeout=15)
    code, text = harness.send(harness.make_message("clean via the package"))
    assert code == 250, text
    (delivered,) = harness.wait_for_mail(1)
    assert "X-Virus-Status: Clean" in delivered.read_text()
    code, text = harness.send(attachment(EICAR, "eicar via the package"))
    assert code == 550 and "Virus found" in text, text
    # The daily job runs the doctor and speaks only when a check fails; this clamd holds the
    # test signatures only, which the doctor fails: it detects no real virus.
    daily = run("/usr/lib/avtool/daily-check")
    assert daily.returncode == 1, daily
    assert "the daily check of the Courier filter failed" in daily.stdout
    assert "holds test or custom signatures only" in daily.stdout
    assert re.search(r"^ok +filter socket \S+ is in place and answers$", daily.stdout, re.M)
    # The hourly rescan, enabled, with the package's defaults: its state lands in root's own
    # directory (not courier's /var/lib/avtool, which the state's private rule refuses).
    hourly = run(str(job))
    assert (hourly.returncode, hourly.stdout) == (0, ""), hourly
    state = Path("/var/lib/avtool-rescan/state.sqlite")
    assert state.stat().st_uid == 0 and stat.S_IMODE(state.stat().st_mode) == 0o600

    # User courier owns /var/lib/avtool: it puts a link where the quarantine was, to a dir of
    # root's. The upgrade's postinst must not chown or chmod through it (design.md, Privileges).
    victim = Path(tempfile.mkdtemp(prefix="avdeb-victim", dir="/var/lib"))
    victim.chmod(0o755)
    as_courier = ["runuser", "-u", "courier", "--"]
    assert run(*as_courier, "mv", str(QUARANTINE), f"{QUARANTINE}.real").returncode == 0
    assert run(*as_courier, "ln", "-s", str(victim), str(QUARANTINE)).returncode == 0

    # --- the upgrade, with mail flowing: no 5xx for clean mail, no infected mail accepted ---
    before = courier_pid()
    with Senders() as senders:
        time.sleep(0.5)
        done = run(*APT, "install", str(debs.upgrade))
        time.sleep(0.5)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    try:
        st = victim.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o755), "chowned"
    finally:
        QUARANTINE.unlink()
        Path(f"{QUARANTINE}.real").rename(QUARANTINE)
        victim.rmdir()
    version = run("dpkg-query", "-W", "-f=${Version}", "avtool").stdout
    assert debs.upgrade.name.startswith(f"avtool_{version}_"), version
    assert "courierfilter stop; courierfilter start" in out, out
    after = courier_pid()
    assert after != before and alive(after) and not alive(before), (before, after)
    results = senders.results
    summary = f"{len(results)} sent: " + ", ".join(f"{k} {c}" for k, c, _ in results)
    assert len(results) >= 10, summary
    assert not [r for r in results if r[0] == "eicar" and r[1] < 400], summary
    assert not [r for r in results if r[0] == "clean" and not (r[1] == 250 or 400 <= r[1] < 500)]
    accepted = [s for k, c, s in results if k == "clean" and c == 250]
    files = harness.wait_for_mail(1 + len(accepted))
    texts = [f.read_text() for f in files]
    assert all("X-Virus-Status: Clean" in t for t in texts), "a message was not scanned"
    assert not [t for t in texts if re.search(r"^Subject: .*eicar", t, re.M | re.I)]
    assert CONF.read_text() == config  # the admin's conffile is kept
    code, text = harness.send(attachment(EICAR, "eicar after the upgrade"))
    assert code == 550, text

    # and when clamd is gone
    clamd.stop()
    daily = run("/usr/lib/avtool/daily-check")
    assert daily.returncode == 1, daily
    assert "the daily check of the Courier filter failed" in daily.stdout
    assert re.search(r"^fail +clamd .*clamd\.sock does not answer", daily.stdout, re.M | re.I)

    # --- remove: the filter stopped and disabled first ---------------------------------------
    (QUARANTINE / "e2e-held").mkdir()
    (QUARANTINE / "e2e-held" / "data").write_bytes(EICAR)  # something quarantined
    done = run(*APT, "remove", "avtool")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "filterctl stop avtool" in out
    assert not ACTIVE.exists() and not ACTIVE.is_symlink()
    assert harness.wait_for(lambda: not SOCKET.exists(), 15), "socket left: mail gets 432"
    assert not alive(after) and not PID_FILE.exists()
    assert not Path("/usr/bin/avtool").exists() and CONF.exists()  # remove keeps conffiles

    # --- purge: the config goes, the quarantined mail stays, and the purge says so -----------
    done = run(*APT, "purge", "avtool")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "KEPT /var/lib/avtool: 1 file(s) of quarantined mail" in out, out
    assert run("dpkg-query", "-W", "avtool").returncode != 0, "still known to dpkg"
    left = [p for p in shipped_paths(debs.upgrade) if p.exists() or p.is_symlink()]
    left += [
        p
        for p in (
            Path("/usr/lib/avtool"),
            Path("/usr/share/avtool"),
            Path("/usr/share/doc/avtool"),
            CONF.with_name("avtool.conf.dpkg-old"),
            ACTIVE,
            SOCKET,
            PID_FILE,
            Path("/run/courier/avtool.pipe"),
            Path("/etc/systemd/system/timers.target.wants/avtool-daily.timer"),
            Path("/var/lib/systemd/deb-systemd-helper-enabled/avtool-daily.timer.dsh-also"),
            Path("/etc/systemd/system/timers.target.wants/avtool-rescan.timer"),
            Path("/var/lib/systemd/deb-systemd-helper-enabled/avtool-rescan.timer.dsh-also"),
            Path("/etc/cron.d/avtool-rescan"),
            Path("/var/lib/avtool-rescan"),
        )
        if p.exists() or p.is_symlink()
    ]
    assert left == [], left
    kept = sorted(str(p.relative_to(STATE)) for p in STATE.rglob("*"))
    assert kept == ["quarantine", "quarantine/e2e-held", "quarantine/e2e-held/data"], kept

    # the purge's other way, as the postrm offers it: AVTOOL_PURGE_QUARANTINE=yes
    control = Path(tempfile.mkdtemp(prefix="avdeb-ctl"))
    try:
        assert run("dpkg-deb", "-e", str(debs.upgrade), str(control)).returncode == 0
        done = run("sh", str(control / "postrm"), "purge", AVTOOL_PURGE_QUARANTINE="yes")
        assert done.returncode == 0, done.stderr
        assert "removed /var/lib/avtool and the quarantined mail" in done.stdout
        assert not STATE.exists()
    finally:
        shutil.rmtree(control)
