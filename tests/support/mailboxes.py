"""Sample mail and mailboxes for the scan tests: messages with known infections in every
encoding clamd decodes (base64, quoted-printable, uuencode, message/rfc822, zip, the
clamav-testfiles samples attached), written as a Maildir, an mbox and an MH folder.

EICAR is built in two parts so that this file is not itself flagged.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import quopri
import zipfile
from dataclasses import dataclass
from pathlib import Path

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
TESTFILES = Path("/usr/share/clamav-testfiles")
# Measured: clamd finds clam_cache_emax.tgz (tgz in tgz) when scanned alone, but not once it is
# a mail attachment, with the test clamd's default limits; test_engine covers it alone.
NOT_IN_MAIL = {"clam_cache_emax.tgz"}
FROM_LINE = b"From sender@example.com Mon Jan  1 00:00:00 2024\n"


def head(subject: str, sender: str = "Alice <alice@example.com>") -> bytes:
    return (
        f"Received: from client (192.0.2.1) by mx.example.test\n"
        f"From: {sender}\nTo: bob@example.test\nSubject: {subject}\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.com>\n"
    ).encode()


def plain(subject: str, body: bytes = b"Hello Bob.\n") -> bytes:
    return head(subject) + b"\n" + body


def _multipart(subject: str, parts: list[bytes], boundary: str = "b1") -> bytes:
    b = boundary.encode()
    out = [
        head(subject),
        b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="%s"\n\n' % b,
    ]
    for part in parts:
        out += [b"--" + b + b"\n", part, b"\n"]
    out.append(b"--" + b + b"--\n")
    return b"".join(out)


def _text_part(text: bytes = b"See the attachment.\n") -> bytes:
    return b"Content-Type: text/plain; charset=us-ascii\n\n" + text


def _b64_part(name: str, data: bytes, ctype: str = "application/octet-stream") -> bytes:
    return (
        f'Content-Type: {ctype}\nContent-Disposition: attachment; filename="{name}"\n'
        "Content-Transfer-Encoding: base64\n\n"
    ).encode() + base64.encodebytes(data)


def with_attachment(subject: str, name: str, data: bytes, boundary: str = "b1") -> bytes:
    return _multipart(subject, [_text_part(), _b64_part(name, data)], boundary)


def quoted_printable(subject: str, data: bytes = EICAR) -> bytes:
    part = (
        b"Content-Type: text/plain; charset=us-ascii\n"
        b"Content-Transfer-Encoding: quoted-printable\n\n" + quopri.encodestring(data)
    )
    return _multipart(subject, [_text_part(b"Below.\n"), part])


def uuencoded(subject: str, name: str = "clam.exe") -> bytes:
    """Old-style mail: no MIME, a uuencoded block in the plain text body."""
    data = (TESTFILES / "clam.exe").read_bytes()
    lines = b"".join(binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45))
    body = b"Here it is:\n\nbegin 644 " + name.encode() + b"\n" + lines + b"`\nend\n"
    return plain(subject, body)


def nested(subject: str) -> bytes:
    """A forwarded message (message/rfc822) whose own attachment is infected."""
    inner = with_attachment("inner", "eicar.com", EICAR, boundary="b2")
    part = b'Content-Type: message/rfc822\nContent-Disposition: attachment; filename="fw.eml"\n\n'
    return _multipart(subject, [_text_part(b"Forwarded.\n"), part + inner])


def zipped(subject: str, name: str = "eicar.com", data: bytes = EICAR) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("readme.txt", "Nothing here.\n")
        z.writestr(name, data)
    return with_attachment(subject, "files.zip", buf.getvalue())


def clean_zip(subject: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("notes.txt", "nothing to see\n" * 100)
    return with_attachment(subject, "notes.zip", buf.getvalue())


@dataclass(frozen=True)
class Sample:
    name: str
    data: bytes
    infected: bool
    part: str = ""  # --explain: the part number that carries it


def samples() -> list[Sample]:
    """One of each infection, and clean mail (a ">From " line, a clean zip, 8-bit text)."""
    return [
        Sample("b64", with_attachment("b64 virus", "eicar.com", EICAR), True, "2"),
        Sample("qp", quoted_printable("qp virus"), True, "2"),
        Sample("uu", uuencoded("uu virus"), True, "1"),
        Sample("rfc822", nested("nested virus"), True, "2.2"),
        Sample("zip", zipped("zip virus"), True, "2"),
        Sample("clean1", plain("hello"), False),
        Sample("clean2", plain("quoted", b"Hi.\n\n>From the start.\nFrom me too.\n"), False),
        Sample("clean3", clean_zip("clean zip"), False),
        Sample("clean4", plain("=?utf-8?q?caf=C3=A9?=", "Grüße\n".encode()), False),
    ]


def attached_testfiles() -> list[Sample]:
    """Every clamav-testfiles sample attached to its own message (base64)."""
    return [
        Sample(f"tf-{p.name}", with_attachment(f"testfile {p.name}", p.name, p.read_bytes()), True)
        for p in sorted(TESTFILES.iterdir())
        if p.name not in NOT_IN_MAIL
    ]


# ---- mailboxes -----------------------------------------------------------------------------------
def maildir(root: Path, items: list[tuple[str, str, bytes]]) -> Path:
    """A Maildir with (subdir, file name, bytes) messages."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for sub, name, data in items:
        (root / sub / name).write_bytes(data)
    return root


def maildir_of(root: Path, chosen: list[Sample]) -> dict[str, Sample]:
    """Samples as a Maildir: alternately new/ and cur/ with flags. Returns key -> sample."""
    items, keys = [], {}
    for n, s in enumerate(chosen):
        key = f"{1700000000 + n}.M{n}P1.test"
        name = key if n % 2 == 0 else f"{key}:2,{'FS' if n % 4 == 1 else 'S'}"
        items.append(("new" if n % 2 == 0 else "cur", name, s.data))
        keys[key] = s
    maildir(root, items)
    return keys


def mbox_bytes(messages: list[bytes], status: list[str] | None = None) -> bytes:
    """An mbox as mail programs write it: From_ line, Status field, body lines quoted."""
    out = []
    for n, data in enumerate(messages):
        flags = status[n] if status else ""
        head_end = data.index(b"\n\n")
        if flags:
            data = data[:head_end] + f"\nStatus: {flags}".encode() + data[head_end:]
        body = data[head_end:].replace(b"\nFrom ", b"\n>From ")
        out.append(FROM_LINE + data[:head_end] + body + b"\n")
    return b"".join(out)


def mbox_of(path: Path, chosen: list[Sample], status: list[str] | None = None) -> dict[str, Sample]:
    path.write_bytes(mbox_bytes([s.data for s in chosen], status))
    return {str(n): s for n, s in enumerate(chosen, 1)}


def mh_of(root: Path, chosen: list[Sample], sequences: str = "") -> dict[str, Sample]:
    root.mkdir(parents=True, exist_ok=True)
    for n, s in enumerate(chosen, 1):
        (root / str(n)).write_bytes(s.data)
    if sequences:
        (root / ".mh_sequences").write_text(sequences)
    return {str(n): s for n, s in enumerate(chosen, 1)}


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file below ``roots``: path -> bytes (to prove nothing changed, or where each went)."""
    found = {}
    for root in roots:
        if root.is_file():
            found[str(root)] = root.read_bytes()
            continue
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                found[path] = Path(path).read_bytes()
    return found
