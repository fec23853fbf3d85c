"""Faults under load through a real Courier: no infected mail delivered, no clean mail lost.

One run: N messages by SMTP to Courier on 127.0.0.1:2525 (tests/e2e/harness.py), S concurrent
senders at a steady total rate, a fraction of them infected, while one fault happens at the
midpoint and is healed ``hold`` seconds later. The senders behave like an MTA's queue: new mail
keeps flowing while a message answered 4xx (or cut off) waits for its retry, with backoff, a
bounded number of times. Then Courier's queue drains and every message is accounted for by its
token (in the Subject) against the Maildir, the quarantine dir and the last SMTP reply:

    delivered    in the Maildir                       (clean mail)
    rejected     550 at DATA                          (policy.reject: ClamAV-Test-File)
    quarantined  250 and a copy in the quarantine dir (policy.quarantine: Eicar-Test-Signature)
    dropped      250 and nowhere                      (policy.drop: a test signature of ours)
    4xx-then-ok  answered 4xx at least once, then one of the above on a retry

The invariant: no infected message is delivered; no clean message is lost (or refused); every
message ends as its policy says, at once or after 4xx retries. Anything else is a violation.

Faults (FAULTS): clamd killed and restarted; clamd SIGSTOPped past the scan deadline, then
SIGCONT; clamd replaced by a fake that answers garbage; two backends, the first killed; the
filter SIGKILLed and restarted (``courierfilter stop`` + ``start``; ``filter-kill-filterctl``
restarts it with ``filterctl stop`` + ``start`` instead, and shows Courier's own moment without a
socket, when mail passes unfiltered: reported apart); stdin closed mid-run (``courierfilter
stop``: the daemon drains); a reload every 100 ms; the quarantine's small tmpfs full.

The filter is avtool as share/install.sh installs it (the /opt/avtool venv, run by Courier as
user courier), under its own filter name ``avfaults`` with its own config file, so the installed
``avtool`` filter and /etc/courier/filters/avtool.conf are never touched; the wrapper puts a
copy of this tree's ``avtool`` package first on the path, so what runs is the code under test.
Its clamds are ours (tests/support/clamd_harness.py), so they can be killed; the garbage clamd is
tests/fakes/clamd.py's. The whole run holds the machine-wide Courier lock.

    python bench/faults.py [--messages 1000] [--senders 4] [--infected 0.02] [--rate 40]
                           [--only clamd-kill,...]
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import heapq
import json
import os
import pwd
import random
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.e2e import harness  # noqa: E402
from tests.fakes.clamd import FakeClamd  # noqa: E402
from tests.support.clamd_harness import ClamdServer  # noqa: E402

NAME = "avfaults"
ROOT = Path("/var/lib/avtool-e2e/faults")  # config, quarantine; readable by user courier
CONF = ROOT / "avtool.conf"
QUARANTINE = ROOT / "quarantine"
PID_FILE = Path(f"/run/courier/{NAME}.pid")
SOCKET = Path(f"/var/lib/courier/allfilters/{NAME}")
VENV_PYTHON = Path(os.environ.get("AVTOOL_PREFIX", "/opt/avtool")) / "bin" / "python"
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
CLAM_EXE = Path("/usr/share/clamav-testfiles/clam.exe")
DROP_MARK = "AVTOOL-FAULTS-DROP-ME-5b1c0e"  # our own signature, for the drop action
DROP_SIG = "AvtoolFaults.Drop:0:*:" + DROP_MARK.encode().hex() + "\n"
KINDS = ("quarantine", "reject", "drop")  # what each infected message should get, in turn

# Small deadlines so that a stopped clamd costs seconds, not minutes.
SCAN_TIMEOUT = 3.0
MESSAGE_TIMEOUT = 6.0
RETRIES = 12  # attempts per message, like a real MTA's queue but bounded
BACKOFF = (0.3, 0.6, 1.0, 1.5, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0)


# --- the rig: clamds, the filter in Courier ---------------------------------------------------


class Rig:
    """Two clamds of ours, the ``avfaults`` filter installed in Courier, its config."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.clamds = [ClamdServer(workdir / f"c{i}", max_threads=4) for i in range(2)]
        self.backends = 1
        self.extra_conf = ""
        self.tmpfs = False

    # ---- set up / tear down ---------------------------------------------------------------------
    def setup(self) -> None:
        if not VENV_PYTHON.exists():
            subprocess.run(["bash", str(REPO / "share" / "install.sh"), "--no-smoke"], check=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # noqa: S103 - clamd (user clamav) must traverse it
        for clamd in self.clamds:
            clamd.prepare()
            clamd.add_signature_file("faults.ndb", DROP_SIG)
            clamd.start()
        lib = harness.filter_lib()
        ROOT.mkdir(parents=True, exist_ok=True)
        ROOT.chmod(0o755)
        wrapper = (
            "#!/bin/sh\n# avtool under test for bench/faults.py (removed afterwards)\n"
            f'PYTHONPATH={lib} exec {VENV_PYTHON} -m avtool serve --name "$(basename "$0")" '
            f"-f {CONF}\n"
        )
        harness.install_filter(NAME, wrapper)
        self.reset_quarantine()

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            harness.remove_filter(NAME)
        self.unmount()
        for clamd in self.clamds:
            clamd.stop()
        shutil.rmtree(ROOT, ignore_errors=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- config and filter --------------------------------------------------------------------
    def write_config(self) -> None:
        backends = ", ".join(f'"{c.unix_socket}"' for c in self.clamds[: self.backends])
        text = f"""\
[clamd]
backends = [{backends}]
connect_timeout = 1.0
scan_timeout = {SCAN_TIMEOUT}
retry_after = 2.0

[serve]
message_timeout = {MESSAGE_TIMEOUT}
drain_timeout = 20.0
pid_file = "{PID_FILE}"
pipe = "/run/courier/{NAME}.pipe"

[policy]
infected = "quarantine"
quarantine = ["Eicar-Test-Signature*"]
reject = ["ClamAV-Test-File*"]
drop = ["AvtoolFaults.Drop*"]
quarantine_dir = "{QUARANTINE}"
{self.extra_conf}"""
        tmp = CONF.with_suffix(".tmp")
        tmp.write_text(text)
        courier = pwd.getpwnam("courier")
        os.chown(tmp, 0, courier.pw_gid)
        tmp.chmod(0o640)
        tmp.replace(CONF)

    def start_filter(self) -> None:
        self.write_config()
        harness.filterctl("start", NAME, timeout=10)

    def stop_filter(self) -> None:
        if (harness.ACTIVE / NAME).is_symlink() or SOCKET.exists():
            harness.filterctl("stop", NAME, timeout=30)

    def filter_pid(self) -> int:
        return int(PID_FILE.read_text().split()[0])

    def sig(self, *words: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_PYTHON), "-m", "avtool", "sig", "-f", str(CONF), *words],
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            check=False,
            env=dict(os.environ, PYTHONPATH=str(harness.FILTER_LIB)),
        )

    # ---- quarantine ------------------------------------------------------------------------------
    def reset_quarantine(self) -> None:
        self.unmount()
        shutil.rmtree(QUARANTINE, ignore_errors=True)
        QUARANTINE.mkdir(mode=0o700)
        courier = pwd.getpwnam("courier")
        os.chown(QUARANTINE, courier.pw_uid, courier.pw_gid)

    def mount_small_tmpfs(self, size: str = "2m") -> None:
        courier = pwd.getpwnam("courier")
        options = f"size={size},mode=0700,uid={courier.pw_uid},gid={courier.pw_gid}"
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "avfaults", str(QUARANTINE)], check=True
        )
        self.tmpfs = True

    def unmount(self) -> None:
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(QUARANTINE)], check=False)
            self.tmpfs = False

    def quarantined_tokens(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for entry in QUARANTINE.iterdir() if QUARANTINE.is_dir() else ():
            data = entry / "data"
            if not data.is_file():
                continue
            token = _token_in(data.read_bytes())
            if token:
                found[token] = found.get(token, 0) + 1
        return found


# --- faults -------------------------------------------------------------------------------------


class Fault:
    """One fault: ``prepare`` before traffic, ``inject`` at the midpoint, ``heal`` ``hold``
    seconds later (from the injecting thread), ``cleanup`` after the run whatever happened."""

    name = "none"
    hold = 0.0
    backends = 1
    notes: str = ""
    healed = False
    courier_window = False  # violations come from Courier's own window, reported apart

    def prepare(self, rig: Rig) -> None:
        pass

    def inject(self, rig: Rig) -> None:
        pass

    def heal(self, rig: Rig) -> None:
        pass

    def cleanup(self, rig: Rig) -> None:
        for clamd in rig.clamds:
            if clamd.pid is None or not clamd.ping():
                with contextlib.suppress(ProcessLookupError, TypeError):
                    os.kill(clamd.pid, signal.SIGCONT)  # type: ignore[arg-type]
                if not clamd.ping():
                    clamd.stop()
                    clamd.start()


class NoFault(Fault):
    name = "none"


class ClamdKill(Fault):
    name = "clamd-kill"
    hold = 2.0

    def inject(self, rig: Rig) -> None:
        assert rig.clamds[0].pid is not None
        os.kill(rig.clamds[0].pid, signal.SIGKILL)

    def heal(self, rig: Rig) -> None:
        rig.clamds[0].stop()  # reaps it
        rig.clamds[0].start()


class ClamdStop(Fault):
    name = "clamd-sigstop"
    hold = SCAN_TIMEOUT + 1.5  # past the scan deadline

    def inject(self, rig: Rig) -> None:
        assert rig.clamds[0].pid is not None
        os.kill(rig.clamds[0].pid, signal.SIGSTOP)

    def heal(self, rig: Rig) -> None:
        assert rig.clamds[0].pid is not None
        os.kill(rig.clamds[0].pid, signal.SIGCONT)


class ClamdGarbage(Fault):
    name = "clamd-garbage"
    hold = 2.0

    def __init__(self) -> None:
        self.fake: FakeClamd | None = None

    def inject(self, rig: Rig) -> None:
        clamd = rig.clamds[0]
        clamd.stop()
        self.fake = FakeClamd(clamd.unix_socket, "garbage").start()
        clamd.unix_socket.chmod(0o666)  # user courier connects

    def heal(self, rig: Rig) -> None:
        if self.fake is not None:
            self.fake.stop()
            self.fake = None
        rig.clamds[0].start()

    def cleanup(self, rig: Rig) -> None:
        if self.fake is not None:
            self.heal(rig)
        super().cleanup(rig)


class ClamdFailover(Fault):
    name = "failover"
    hold = 0.0  # the first backend stays dead until the end of the run
    backends = 2

    def inject(self, rig: Rig) -> None:
        assert rig.clamds[0].pid is not None
        os.kill(rig.clamds[0].pid, signal.SIGKILL)

    def cleanup(self, rig: Rig) -> None:
        rig.clamds[0].stop()
        rig.clamds[0].start()


def restart_courierfilter() -> None:
    """``courierfilter stop`` + ``start``: the filter stays linked and its socket stays (a dead
    one answers 432), until the new daemon renames its own over it. No moment without a socket,
    so no moment when Courier accepts mail unfiltered (docs/notes/courier.md §3)."""
    subprocess.run(["/usr/sbin/courierfilter", "stop"], check=True, capture_output=True)
    harness.wait_for(lambda: not _pidfile_alive(Path("/run/courier/courierfilter.pid")), 20)
    subprocess.run(["/usr/sbin/courierfilter", "start"], check=True, capture_output=True)
    if not harness.wait_for(_socket_accepts, 15):
        raise RuntimeError("courierfilter start: the avfaults socket does not accept")


def _socket_accepts() -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(SOCKET))
        except OSError:
            return False
    return True


class FilterKill(Fault):
    """SIGKILL the filter: Courier answers 432 while its socket has no listener
    (docs/notes/courier.md §3); then the safe restart, ``courierfilter stop`` + ``start``
    (restart_courierfilter)."""

    name = "filter-kill"
    hold = 1.5

    def inject(self, rig: Rig) -> None:
        os.kill(rig.filter_pid(), signal.SIGKILL)

    def heal(self, rig: Rig) -> None:
        restart_courierfilter()


class FilterKillFilterctl(FilterKill):
    """The same crash, restarted with ``filterctl stop`` + ``filterctl start``: courierfilter
    removes the dead socket on the first HUP, and until the new daemon has bound its socket
    (about 0.4 s here) Courier accepts mail UNFILTERED. Courier's window, not avtool's: it is
    reported apart and does not fail the run (``courier_window``)."""

    name = "filter-kill-filterctl"
    courier_window = True

    def heal(self, rig: Rig) -> None:
        harness.filterctl("stop", NAME, timeout=15)
        harness.filterctl("start", NAME, timeout=15)


class FilterDrain(Fault):
    """stdin closed mid-run: ``courierfilter stop`` closes every filter's stdin and waits for it
    (the filter stays linked in active/); the daemon drains and exits; ``courierfilter start``."""

    name = "stdin-drain"
    hold = 1.0

    def inject(self, rig: Rig) -> None:
        subprocess.run(["/usr/sbin/courierfilter", "stop"], check=True, capture_output=True)

    def heal(self, rig: Rig) -> None:
        harness.wait_for(lambda: not _pidfile_alive(Path("/run/courier/courierfilter.pid")), 20)
        subprocess.run(["/usr/sbin/courierfilter", "start"], check=True, capture_output=True)
        if not harness.wait_for(_socket_accepts, 15):
            raise RuntimeError("courierfilter start: the avfaults socket does not accept")


class ReloadStorm(Fault):
    """A virus reload every 100 ms for ``hold`` s: by ``avtool sig reload virus`` (which waits
    for the daemon's answer) whenever none is running, else by SIGUSR2 itself, the signal sig
    sends (a Python start-up every 100 ms would take the 2 cores from Courier and clamd). sig
    exits 0 (answered) or 4 (another request in progress); anything else is a problem."""

    name = "reload-storm"
    hold = 3.0

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.signals = 0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def inject(self, rig: Rig) -> None:
        self.thread = threading.Thread(target=self._storm, args=(rig,), daemon=True)
        self.thread.start()

    def _storm(self, rig: Rig) -> None:
        running: list[subprocess.Popen[bytes]] = []
        cmd = [str(VENV_PYTHON), "-m", "avtool", "sig", "-f", str(CONF), "-t", "20"]
        env = dict(os.environ, PYTHONPATH=str(harness.FILTER_LIB))
        pid = rig.filter_pid()
        end = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < end:
            self._collect(running)
            if running:
                os.kill(pid, signal.SIGUSR2)
                self.signals += 1
            else:
                running.append(
                    subprocess.Popen(
                        [*cmd, "reload", "virus"],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            self.stop.wait(0.1)
        for proc in running:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._collect(running)

    def _collect(self, running: list[subprocess.Popen[bytes]]) -> None:
        for proc in list(running):
            if proc.poll() is not None:
                self.codes[proc.returncode] = self.codes.get(proc.returncode, 0) + 1
                running.remove(proc)

    def heal(self, rig: Rig) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(60)
        exits = ", ".join(f"{k}:{v}" for k, v in sorted(self.codes.items()))
        self.notes = f"{sum(self.codes.values())} sig (exit {exits}) + {self.signals} SIGUSR2"

    def problems(self) -> list[str]:
        return [f"avtool sig exited {c} ({n}x)" for c, n in self.codes.items() if c not in (0, 4)]


class QuarantineFull(Fault):
    """The quarantine dir on a small tmpfs, filled at the midpoint, emptied ``hold`` s later.
    Quarantine must then answer 4xx (Courier keeps the mail), never accept and lose it."""

    name = "quarantine-full"
    hold = 3.0

    def prepare(self, rig: Rig) -> None:
        rig.reset_quarantine()
        rig.mount_small_tmpfs()

    def __init__(self) -> None:
        self.probe: int | None = None

    def inject(self, rig: Rig) -> None:
        filler = QUARANTINE / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        # One message to quarantine while it is full, outside the plan (not an AVF- subject):
        # proof that the window was hit, whatever the schedule did.
        probe = harness.make_message("PROBE quarantine-full", "EICAR below.\n" + EICAR.decode())
        self.probe, _ = harness.send(probe, timeout=30)
        self.notes = f"probe while full: {self.probe}"

    def heal(self, rig: Rig) -> None:
        (QUARANTINE / "filler").unlink(missing_ok=True)


FAULTS: dict[str, Callable[[], Fault]] = {
    f.name: f
    for f in (
        NoFault,
        ClamdKill,
        ClamdStop,
        ClamdGarbage,
        ClamdFailover,
        FilterKill,
        FilterKillFilterctl,
        FilterDrain,
        ReloadStorm,
        QuarantineFull,
    )
}


# --- one run ------------------------------------------------------------------------------------


@dataclass
class Sent:
    i: int
    token: str
    kind: str  # clean, quarantine, reject, drop
    codes: list[int] = field(default_factory=list)  # every reply (0: connection failed)
    last_text: str = ""


@dataclass
class Result:
    fault: str
    sent: int = 0
    delivered: int = 0
    rejected: int = 0
    quarantined: int = 0
    dropped: int = 0
    deferred_then_ok: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    retries: int = 0  # 4xx replies and broken connections, all messages together
    duplicates: int = 0  # delivered more than once (a reply lost after Courier accepted)
    notes: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    courier_window: bool = False

    @property
    def ok(self) -> bool:
        return not self.violations


def make_message(sent: Sent) -> bytes:
    body = f"Fault run message {sent.i}.\nToken: {sent.token}\n"
    if sent.kind == "drop":
        body += f"{DROP_MARK}\n"
    headers = [("Message-ID", f"<{sent.token}@example.test>")]
    payload = {"quarantine": EICAR, "reject": CLAM_EXE.read_bytes()}.get(sent.kind)
    if payload is None:
        return harness.make_message(f"{sent.token}", body, headers=headers)
    encoded = base64.encodebytes(payload).decode()
    mime = (
        f"--b1\nContent-Type: text/plain\n\n{body}"
        "--b1\nContent-Type: application/octet-stream\n"
        'Content-Disposition: attachment; filename="file.bin"\n'
        f"Content-Transfer-Encoding: base64\n\n{encoded}--b1--\n"
    )
    headers += [("MIME-Version", "1.0"), ("Content-Type", 'multipart/mixed; boundary="b1"')]
    return harness.make_message(f"{sent.token}", mime, headers=headers)


def _token_in(data: bytes) -> str | None:
    at = data.find(b"Subject: AVF-")
    if at < 0:
        return None
    line = data[at + 9 : data.find(b"\n", at)]
    return line.decode(errors="replace").strip()


def attempt(message: bytes, sent: Sent) -> bool:
    """One SMTP transaction; True when the answer is final (2xx or 5xx)."""
    try:
        code, text = harness.send(message, timeout=30)
    except (OSError, smtplib.SMTPException) as e:
        code, text = 0, f"{type(e).__name__}: {e}"
    sent.codes.append(code)
    sent.last_text = text
    return 0 < code < 400 or code >= 500


def run_fault(
    rig: Rig,
    fault: Fault,
    *,
    messages: int,
    senders: int = 4,
    infected: float = 0.02,
    rate: float = 40.0,
    seed: int = 1,
) -> Result:
    """One fault under load; the Courier lock must be held (harness.exclusive)."""
    run_id = f"{fault.name}-{os.getpid()}-{int(time.time())}"
    harness.courier("reset")
    rig.reset_quarantine()
    rig.backends = fault.backends
    started = time.monotonic()
    result = Result(fault.name)
    try:
        fault.prepare(rig)
        rig.start_filter()
        plan = _plan(run_id, messages, infected, seed)
        sending = time.monotonic()
        _drive(rig, fault, plan, senders, rate)
        settling = time.monotonic()
        _settle()
        result.phases = {
            "setup": round(sending - started, 1),
            "send": round(settling - sending, 1),
            "settle": round(time.monotonic() - settling, 1),
        }
        _account(rig, plan, result)
    finally:
        if fault.hold and not fault.healed:
            with contextlib.suppress(Exception):
                fault.heal(rig)
        fault.cleanup(rig)
        with contextlib.suppress(Exception):
            rig.stop_filter()
        rig.unmount()
    if isinstance(fault, ReloadStorm):
        result.violations += fault.problems()
    result.notes = fault.notes
    result.courier_window = fault.courier_window
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _plan(run_id: str, messages: int, infected: float, seed: int) -> list[Sent]:
    """Which messages are infected, spread evenly (every 1/infected-th), kinds in turn."""
    rng = random.Random(seed)
    every = max(1, round(1 / infected)) if infected > 0 else messages + 1
    offset = rng.randrange(every)
    plan = []
    bad = 0
    for i in range(messages):
        kind = "clean"
        if i % every == offset:
            kind = KINDS[bad % len(KINDS)]
            bad += 1
        plan.append(Sent(i, f"AVF-{run_id}-{i:05d}", kind))
    return plan


def _drive(rig: Rig, fault: Fault, plan: list[Sent], senders: int, rate: float) -> None:
    """Like an MTA's queue: new messages on a fixed schedule (``rate`` per second in all), and
    deferred ones (4xx or a broken connection) again after a backoff, at most RETRIES times;
    ``senders`` connections at once, retries first. At the midpoint the fault is injected in its
    own thread, and healed ``hold`` s later."""
    fresh = collections.deque(plan)
    retries: list[tuple[float, int, Sent]] = []  # (due, i, message), a heap
    cond = threading.Condition()
    open_ = [len(plan)]  # messages without a final answer yet
    start = time.monotonic()
    deadline = start + len(plan) / rate + 120  # no retry loop outlives this
    midpoint = len(plan) // 2
    errors: list[BaseException] = []

    def injector() -> None:
        try:
            fault.inject(rig)
            if fault.hold:
                time.sleep(fault.hold)
                fault.heal(rig)
                fault.healed = True
        except BaseException as e:  # noqa: BLE001 - reported after the run
            errors.append(e)

    chaos = threading.Thread(target=injector, name="fault", daemon=True)

    def next_job() -> Sent | None:
        with cond:
            while True:
                now = time.monotonic()
                if retries and retries[0][0] <= now:
                    return heapq.heappop(retries)[2]
                due = start + fresh[0].i / rate if fresh else None
                if due is not None and due <= now:
                    sent = fresh.popleft()
                    if sent.i == midpoint:
                        chaos.start()
                    return sent
                if open_[0] == 0 or now > deadline:
                    return None
                wake = min(t for t in (due, retries[0][0] if retries else None, now + 0.2) if t)
                cond.wait(max(0.0, wake - now))

    def sender() -> None:
        while (sent := next_job()) is not None:
            final = attempt(make_message(sent), sent)
            with cond:
                if final or len(sent.codes) >= RETRIES or time.monotonic() > deadline:
                    open_[0] -= 1
                else:
                    backoff = BACKOFF[min(len(sent.codes) - 1, len(BACKOFF) - 1)]
                    heapq.heappush(retries, (time.monotonic() + backoff, sent.i, sent))
                cond.notify_all()

    threads = [threading.Thread(target=sender, name=f"smtp-{n}") for n in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if chaos.ident is not None:
        chaos.join(120)
    if errors:
        raise RuntimeError(f"fault {fault.name} failed: {errors[0]!r}") from errors[0]


def _settle(timeout: float = 90.0) -> None:
    """Until Courier's queue is empty and the Maildir has not changed for a second."""
    end = time.monotonic() + timeout
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < end:
        count = len(harness.mail_files())
        if count != last:
            last, stable_since = count, time.monotonic()
        elif not harness.queue_files() and time.monotonic() - stable_since >= 1.0:
            return
        time.sleep(0.2)


def _account(rig: Rig, plan: list[Sent], result: Result) -> None:
    delivered: dict[str, int] = {}
    for path in harness.mail_files():
        with contextlib.suppress(FileNotFoundError):
            token = _token_in(path.read_bytes())
            if token:
                delivered[token] = delivered.get(token, 0) + 1
    quarantined = rig.quarantined_tokens()
    result.sent = len(plan)
    for s in plan:
        final = s.codes[-1] if s.codes else None
        got = delivered.get(s.token, 0)
        held = quarantined.get(s.token, 0)
        result.retries += sum(1 for c in s.codes[:-1] if c == 0 or c >= 400)
        result.duplicates += max(0, got - 1)
        if got:
            result.delivered += 1
            outcome = "delivered"
        elif final is not None and final >= 500:
            result.rejected += 1
            outcome = "rejected"
        elif held and final is not None and final < 400:
            result.quarantined += 1
            outcome = "quarantined"
        elif final is not None and 0 < final < 400:
            result.dropped += 1
            outcome = "dropped"
        else:
            outcome = "unanswered"
        want = {"clean": "delivered", "quarantine": "quarantined", "reject": "rejected"}.get(
            s.kind, "dropped"
        )
        if outcome == want:
            if len(s.codes) > 1:
                result.deferred_then_ok += 1
            continue
        what = f"{s.token} ({s.kind}): {outcome}, wanted {want}; replies {s.codes}"
        if s.kind != "clean" and got:
            what = "INFECTED DELIVERED: " + what
        elif s.kind == "clean" and not got:
            what = "CLEAN LOST: " + what
        result.violations.append(f"{what} {s.last_text[:80]!r}")


# --- the table ----------------------------------------------------------------------------------

COLUMNS = (
    ("fault", 21),
    ("sent", 5),
    ("delivered", 9),
    ("rejected", 8),
    ("quarantined", 11),
    ("dropped", 7),
    ("4xx-then-ok", 11),
    ("4xx-replies", 11),
    ("violations", 10),
    ("seconds", 7),
)


def table(results: list[Result]) -> str:
    head = "  ".join(f"{name:>{w}}" if i else f"{name:<{w}}" for i, (name, w) in enumerate(COLUMNS))
    lines = [head, "-" * len(head)]
    for r in results:
        values = (
            r.fault,
            r.sent,
            r.delivered,
            r.rejected,
            r.quarantined,
            r.dropped,
            r.deferred_then_ok,
            r.retries,
            len(r.violations),
            f"{r.seconds:.1f}",
        )
        lines.append(
            "  ".join(
                f"{v:<{w}}" if i == 0 else f"{v:>{w}}"
                for i, (v, (_, w)) in enumerate(zip(values, COLUMNS, strict=True))
            )
        )
    return "\n".join(lines)


@contextlib.contextmanager
def rig_up(workdir: Path) -> Iterator[Rig]:
    """Courier up (the caller holds the lock), the rig set up; torn down afterwards."""
    harness.courier("up")
    rig = Rig(workdir)
    try:
        rig.setup()
        yield rig
    finally:
        rig.teardown()
        harness.courier("reset")


def _pidfile_alive(path: Path) -> bool:
    try:
        pid = int(path.read_text().split()[0])
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return state not in ("Z", "X")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--infected", type=float, default=0.02)
    parser.add_argument("--rate", type=float, default=40.0, help="messages/s, all senders")
    parser.add_argument("--only", default="", help="comma-separated fault names")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "faults.json")
    args = parser.parse_args(argv)
    if not 1 <= args.messages <= 20000 or not 1 <= args.senders <= 32:
        parser.error("--messages in 1..20000, --senders in 1..32")
    names = [n for n in args.only.split(",") if n] or list(FAULTS)
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        parser.error(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
    if harness.unavailable():
        print(f"faults: {harness.unavailable()}", file=sys.stderr)
        return 2
    results: list[Result] = []
    workdir = Path("/tmp") / f"avfaults-{os.getpid()}"
    with harness.exclusive(), rig_up(workdir) as rig:
        try:
            for name in names:
                r = run_fault(
                    rig,
                    FAULTS[name](),
                    messages=args.messages,
                    senders=args.senders,
                    infected=args.infected,
                    rate=args.rate,
                )
                results.append(r)
                print(table([r]).splitlines()[-1], r.notes, r.phases, flush=True)
                for v in r.violations[:10]:
                    print(f"    {v}", flush=True)
        finally:
            harness.courier("down")
    print()
    print(
        f"{args.messages} messages per run, {args.senders} SMTP senders, {args.infected:.0%} "
        f"infected, {args.rate:g} msg/s offered, through Courier on {harness.HOST}:{harness.PORT}"
    )
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(r) for r in results], indent=1))
    bad = sum(len(r.violations) for r in results if not r.courier_window)
    print(f"invariant: {'held in every run' if not bad else f'{bad} VIOLATION(S)'}", end="")
    window = [r for r in results if r.courier_window]
    if window:
        print(
            "; Courier's own no-socket window (filterctl stop + start): "
            + ", ".join(f"{r.fault} {len(r.violations)}" for r in window),
            end="",
        )
    print()
    return 0 if not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
