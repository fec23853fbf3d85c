"""The engine against the real clamd of the session (tests/support/clamd_harness.py, StreamMaxLength
10M).

Signature names come from an unsigned test DB and end in ``.UNOFFICIAL`` (docs/notes/clamav.md §1):
assert on Infected, and on the name's stem only.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from avtool.engine import Clean, Engine, Failed, Infected, Unchecked
from tests.conftest import MakeConfig
from tests.support.clamd_harness import TESTFILES, ClamdServer
from tests.support.dirs import public_dir
from tests.support.scanning import scan_path
from tests.support.serve import EICAR, mail

pytestmark = pytest.mark.clamd


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Path]:
    """A dir clamd's own user can read (SCAN needs it); tmp_path's parents are 0700."""
    with public_dir("ave") as d:
        yield d


def write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    path.chmod(0o644)
    return path


def zipped(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("readme.txt", "See the attachment.\n")
        z.writestr(name, data)
    return buf.getvalue()


def infected(v: object, stem: str = "Eicar-Test-Signature") -> bool:
    return isinstance(v, Infected) and v.names[0].startswith(stem)


@pytest.mark.parametrize("transfer", ["auto", "instream", "scan"])
def test_clean_and_eicar_by_each_transfer(
    engine_config: MakeConfig, clamd_server: ClamdServer, files: Path, transfer: str
) -> None:
    e = Engine.from_config(engine_config(transfer=transfer))
    sock = str(clamd_server.unix_socket)
    assert scan_path(e, write(files, "clean.eml", mail())) == Clean(sock)
    v = scan_path(e, write(files, "eicar.txt", EICAR))
    assert infected(v) and v.backend == sock


def test_eicar_in_mail_base64_attachment_and_zip(engine_config: MakeConfig, files: Path) -> None:
    e = Engine.from_config(engine_config())
    assert infected(scan_path(e, write(files, "b64.eml", mail(attachment=EICAR))))
    zip_mail = mail(attachment=zipped("eicar.com", EICAR))
    assert infected(scan_path(e, write(files, "zip.eml", zip_mail)))
    clean_zip = mail(attachment=zipped("notes.txt", b"nothing to see\n" * 100))
    assert isinstance(scan_path(e, write(files, "clean-zip.eml", clean_zip)), Clean)


TESTFILE_NAMES = sorted(p.name for p in TESTFILES.glob("*")) if TESTFILES.is_dir() else []


@pytest.mark.parametrize("name", TESTFILE_NAMES)
def test_every_clamav_testfile_is_infected(engine_config: MakeConfig, name: str) -> None:
    # clamd unpacks each of them down to the 544-byte clam.exe of avtool-test.hdb
    # (docs/notes/clamav.md §1).
    v = scan_path(Engine.from_config(engine_config()), TESTFILES / name)
    assert isinstance(v, Infected), v
    assert v.names[0].startswith(("ClamAV-Test-File", "Eicar-Test-Signature"))


def test_testfiles_are_all_there() -> None:
    # Debian's clamav-testfiles; no clam.rar (+dfsg, docs/notes/clamav.md §1)
    assert len(TESTFILE_NAMES) == 44


def test_over_max_size_is_unchecked_without_contacting_clamd(
    engine_config: MakeConfig, files: Path
) -> None:
    e = Engine.from_config(engine_config(max_size=1024))
    v = scan_path(e, write(files, "big.eml", mail(body=b"x" * 2000)))
    assert isinstance(v, Unchecked) and v.reason.startswith("too large: ")
    assert "> scan.max_size 1024" in v.reason and v.backend == ""
    assert e.backends[0].scans == 0


def test_over_stream_max_length_by_tcp_instream_is_unchecked(
    engine_config: MakeConfig, clamd_server: ClamdServer, files: Path
) -> None:
    path = files / "30m.bin"
    with open(path, "wb") as f:
        for _ in range(30):
            f.write(os.urandom(1 << 20))
    e = Engine.from_config(engine_config(clamd_server.tcp_address, max_size="100M"))
    v = scan_path(e, path)
    assert v == Unchecked("too large for clamd StreamMaxLength", clamd_server.tcp_address)
    assert not e.backends[0].set_aside()
    assert isinstance(scan_path(e, write(files, "small.eml", mail())), Clean)  # still fine


def test_tcp_instream_verdicts(
    engine_config: MakeConfig, clamd_server: ClamdServer, files: Path
) -> None:
    e = Engine.from_config(engine_config(clamd_server.tcp_address))
    assert e.backends[0].mode_for(e.transfer) == "instream"
    assert scan_path(e, write(files, "c.eml", mail())) == Clean(clamd_server.tcp_address)
    assert infected(scan_path(e, write(files, "v.eml", mail(attachment=EICAR))))
    # exactly 1 MiB and 1 MiB + 1: the chunk boundary and the end marker's own write
    for size in (1 << 20, (1 << 20) + 1):
        blob = EICAR + b"\n" + b"a" * (size - len(EICAR) - 1)
        assert infected(scan_path(e, write(files, f"{size}.txt", blob)))


@pytest.mark.skipif(shutil.which("zip") is None, reason="needs Debian's zip (tests/setup.sh)")
def test_encrypted_zip_is_unchecked(engine_config: MakeConfig, files: Path) -> None:
    # Python's zipfile cannot encrypt; zip -P makes a ZipCrypto archive. Clean content inside:
    # AlertEncrypted yes flags any encrypted zip (docs/notes/clamav.md §2), which is Unchecked,
    # not Infected.
    inner = write(files, "notes.txt", b"nothing to see\n")
    archive = files / "secret.zip"
    subprocess.run(
        ["zip", "-q", "-j", "-P", "secret", str(archive), str(inner)], check=True, timeout=30
    )
    e = Engine.from_config(engine_config())
    v = scan_path(e, write(files, "enc.eml", mail(attachment=archive.read_bytes())))
    assert isinstance(v, Unchecked)
    assert v.reason.startswith("encrypted archive: Heuristics.Encrypted."), v


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file clamd cannot read")
def test_file_clamd_cannot_read_fildes_works_scan_is_denied(
    engine_config: MakeConfig, tmp_path: Path
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    path = private / "D1"
    path.write_bytes(mail(attachment=EICAR))
    path.chmod(0o600)
    assert infected(scan_path(Engine.from_config(engine_config()), path))  # FILDES
    scan = Engine.from_config(engine_config(transfer="scan"))
    v = scan_path(scan, path)
    assert isinstance(v, Failed) and "denied" in v.reason.lower(), v
    assert not scan.backends[0].set_aside()  # about the file, not the backend


def test_caller_offset_is_untouched(engine_config: MakeConfig, files: Path) -> None:
    path = write(files, "v.eml", mail(attachment=EICAR))
    for transfer in ("auto", "instream"):
        e = Engine.from_config(engine_config(transfer=transfer))
        fd = os.open(path, os.O_RDONLY)
        try:
            os.lseek(fd, 10, os.SEEK_SET)
            assert infected(e.scan(fd))
            assert os.lseek(fd, 0, os.SEEK_CUR) == 10
        finally:
            os.close(fd)


def test_failover_past_a_missing_socket(
    engine_config: MakeConfig, clamd_server: ClamdServer, files: Path
) -> None:
    sock = str(clamd_server.unix_socket)
    e = Engine.from_config(engine_config("/nonexistent/clamd.sock", sock))
    v = scan_path(e, write(files, "v.eml", mail(attachment=EICAR)))
    assert infected(v) and v.backend == sock
    down = e.backends[0]
    assert down.set_aside() and down.errors == 1
    assert scan_path(e, write(files, "c.eml", mail())) == Clean(sock)
    assert down.errors == 1  # set aside: not tried again


def test_all_backends_down_is_failed(engine_config: MakeConfig, files: Path) -> None:
    e = Engine.from_config(engine_config("/nonexistent/a.sock", "127.0.0.1:9"))
    v = scan_path(e, write(files, "c.eml", mail()))
    assert isinstance(v, Failed)
    assert v.reason.startswith("all clamd backends failed: /nonexistent/a.sock: cannot connect")
    assert "127.0.0.1:9: cannot connect: Connection refused" in v.reason


def test_round_robin_spreads_across_two_addresses(
    engine_config: MakeConfig, clamd_server: ClamdServer, files: Path
) -> None:
    unix, tcp = str(clamd_server.unix_socket), clamd_server.tcp_address
    e = Engine.from_config(engine_config(unix, tcp, balance="round-robin"))
    path = write(files, "c.eml", mail())
    answered = [scan_path(e, path).backend for _ in range(10)]
    assert answered == [unix, tcp] * 5
    assert [b.scans for b in e.backends] == [5, 5]


def test_four_threads_share_one_engine(engine_config: MakeConfig, files: Path) -> None:
    e = Engine.from_config(engine_config())
    clean, virus = write(files, "c.eml", mail()), write(files, "v.eml", mail(attachment=EICAR))
    wrong: list[str] = []

    def work(n: int) -> None:
        for i in range(50):
            bad = (i + n) % 3 == 0
            v = scan_path(e, virus if bad else clean)
            if (infected(v) if bad else isinstance(v, Clean)) is False:
                wrong.append(f"thread {n} scan {i}: {v}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert e.backends[0].scans == 200 and e.backends[0].errors == 0


def test_commands(engine_config: MakeConfig) -> None:
    b = Engine.from_config(engine_config()).backends[0]
    b.ping()
    assert b.version().startswith("ClamAV 1.")
    assert "POOLS:" in b.stats() and b.stats().endswith("END")
    info = b.describe()
    assert info.reachable and info.error is None
    assert info.version == f"ClamAV {info.engine_version}"
    # no daily.cvd: VERSION has no "/daily/date" (docs/notes/clamav.md §2)
    assert info.db_version is None


def test_reload_picks_up_a_new_signature(
    engine_config: MakeConfig, clamd_server: ClamdServer, files: Path
) -> None:
    marker = b"avtool-reload-marker-" + os.urandom(8).hex().encode()
    path = write(files, "m.txt", b"before " + marker + b" after\n")
    e = Engine.from_config(engine_config())
    assert isinstance(scan_path(e, path), Clean)
    clamd_server.add_signature_file("reload.ndb", f"Avtool-Reload-Test:0:*:{marker.hex()}\n")
    try:
        assert e.backends[0].reload() == "RELOADING"
        # Concurrent reload: scans use the old DB until the new one is swapped in
        # (docs/notes/clamav.md §2).
        end = time.monotonic() + 20
        v = scan_path(e, path)
        while not infected(v, "Avtool-Reload-Test") and time.monotonic() < end:
            time.sleep(0.05)
            v = scan_path(e, path)
        assert infected(v, "Avtool-Reload-Test"), v
    finally:
        (clamd_server.db_dir / "reload.ndb").unlink()
        e.backends[0].reload()
