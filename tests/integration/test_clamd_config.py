"""share/clamd-config.sh (run by share/install.sh) on Debian's generated clamd.conf, and a real
clamd on the file it leaves: what Debian's clamd says before and after (issue 15)."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from avtool.engine import Clean, Engine, Infected, Unchecked, secondlook
from tests.conftest import make_config
from tests.support.clamd_harness import REPO
from tests.support.debian_clamd import DebianClamd, debian_conf_text
from tests.support.serve import EICAR, mail

pytestmark = [
    pytest.mark.clamd,
    pytest.mark.skipif(debian_conf_text() is None, reason="needs Debian's clamav-daemon"),
]
SCRIPT = REPO / "share" / "clamd-config.sh"
WANTED = ("AlertEncrypted", "AlertEncryptedArchive", "AlertEncryptedDoc", "AlertExceedsMax")


def configure(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), str(conf)], capture_output=True, text=True, timeout=30, check=False
    )


def test_changes_are_printed_backed_up_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    conf = tmp_path / "clamd.conf"
    original = debian_conf_text() or ""
    conf.write_text(original.replace("\n", "\nAlertExceedsMax no\n", 1))  # one present, "no"
    first = configure(conf)
    assert first.returncode == 10, first.stderr
    out = first.stdout.splitlines()
    assert f"avtool-install: {conf}: AlertExceedsMax no -> yes" in out
    for name in WANTED[:3]:
        assert f"avtool-install: {conf}: {name} yes (added)" in out
    (backup,) = tmp_path.glob("clamd.conf.avtool-*")
    assert backup.read_text() == original.replace("\n", "\nAlertExceedsMax no\n", 1)
    assert f"backup of {conf}: {backup}" in first.stdout
    text = conf.read_text()
    alerts = [x for x in text.splitlines() if x.startswith("Alert")]
    assert alerts[0] == "AlertExceedsMax yes"  # changed where it was
    assert sorted(alerts) == sorted(f"{n} yes" for n in WANTED)
    # every other line is Debian's, in its order
    assert [x for x in text.splitlines() if not x.startswith(("Alert", "# added by avtool"))] == [
        x for x in original.splitlines()
    ]
    second = configure(conf)
    assert second.returncode == 0
    assert second.stdout == f"avtool-install: {conf} already reports what clamd cannot check " \
        "(Alert* set): unchanged\n"  # fmt: skip
    assert conf.read_text() == text
    assert len(list(tmp_path.glob("clamd.conf.avtool-*"))) == 1  # no second backup


def test_unreadable_conf_is_one_line_and_nothing_changes(tmp_path: Path) -> None:
    done = configure(tmp_path / "missing.conf")
    assert done.returncode == 1
    assert done.stderr == f"avtool-install: cannot read {tmp_path / 'missing.conf'}\n"
    assert list(tmp_path.iterdir()) == []


def nested_zip(payload: bytes, depth: int) -> bytes:
    for level in range(depth):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:  # deflated: no plain EICAR
            z.writestr("eicar.com" if level == 0 else f"level{level}.zip", payload)
        payload = out.getvalue()
    return payload


def encrypted_zip(payload: bytes, tmp_path: Path) -> bytes:
    """zip -P makes a ZipCrypto archive (Python's zipfile cannot encrypt)."""
    inner = tmp_path / "eicar.com"
    inner.write_bytes(payload)
    archive = tmp_path / "secret.zip"
    archive.unlink(missing_ok=True)
    subprocess.run(["zip", "-q", "-j", "-P", "secret", str(archive), str(inner)], check=True)
    return archive.read_bytes()


@pytest.fixture
def debian_clamd() -> Iterator[DebianClamd]:
    server = DebianClamd(Path(tempfile.mkdtemp(prefix="avdc", dir="/tmp")))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.mark.skipif(shutil.which("zip") is None, reason="needs Debian's zip (tests/setup.sh)")
def test_debian_clamd_calls_them_clean_until_the_installer_s_settings(
    debian_clamd: DebianClamd, tmp_path: Path
) -> None:
    """Debian's generated clamd.conf answers OK for an encrypted zip holding EICAR and for
    EICAR zipped 20 deep (MaxRecursion 16); after share/clamd-config.sh and a restart, both are
    unchecked. EICAR and a clean mail are as before."""
    messages = {
        "encrypted": mail(attachment=encrypted_zip(EICAR, tmp_path)),
        "nested-20": mail(attachment=nested_zip(EICAR, 20)),
        "eicar": mail(attachment=EICAR),
        "clean": mail(),
    }
    debian_clamd.start()
    engine = Engine.from_config(make_config(str(debian_clamd.unix_socket)))
    before = {k: secondlook.scan_bytes(engine, m) for k, m in messages.items()}
    debian_clamd.stop()
    assert isinstance(before["encrypted"], Clean) and isinstance(before["nested-20"], Clean)

    assert configure(debian_clamd.conf).returncode == 10
    debian_clamd.start()
    after = {k: secondlook.scan_bytes(engine, m) for k, m in messages.items()}
    assert after["encrypted"] == Unchecked(
        "encrypted archive: Heuristics.Encrypted.Zip", engine.backends[0].address
    )
    assert after["nested-20"] == Unchecked(
        "clamd limits exceeded: Heuristics.Limits.Exceeded.MaxRecursion",
        engine.backends[0].address,
    )
    assert isinstance(after["eicar"], Infected) and isinstance(after["clean"], Clean)
