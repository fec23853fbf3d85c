"""A deterministic corpus of mail for benchmarks (docs/notes/clamav.md section 4).

500 messages by default: 41% plain text, 20% text+HTML alternative, 26% with a random base64
attachment of 100 KB-2 MB (log-uniform, so most are small as in real mail), 11% with a zip
(text + random blob), 2% with an EICAR attachment: about 130 MB, median 35 KB. Same seed,
same bytes.

    python bench/corpus.py DIR [--count 500] [--seed 1]
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import os
import random
import sys
import zipfile
from pathlib import Path

# Built in two parts so that this source file is not itself flagged.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

# Shares of each kind, per 500 (docs/notes/clamav.md §4: 207 / 102 / 128 / 53 / 10).
MIX = (("plain", 207), ("alternative", 102), ("attachment", 128), ("zip", 53), ("eicar", 10))
_VOCABULARY = (
    "the of and to in is for on that with as this be are from by at or it an was we will "
    "invoice meeting report attached please find below regards thanks project update server "
    "mail message delivery schedule budget review quarter customer order shipping account"
)
WORDS = tuple(_VOCABULARY.split())
FIXED_TIME = (2024, 1, 2, 3, 4, 6)  # zip member dates: the same bytes on every run


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def _text(rng: random.Random, size: int) -> bytes:
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."
        lines.append(line)
        total += len(line) + 1
    return ("\n".join(lines) + "\n").encode()


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data)


def _head(rng: random.Random, n: int, kind: str) -> bytes:
    return (
        f"Received: from client{n}.example.com (192.0.2.{n % 250 + 1}) by mx.example.test\n"
        f"From: sender{rng.randint(1, 999)}@example.com\nTo: rcpt{n}@example.test\n"
        f"Subject: {kind} message {n}\nMessage-ID: <{n}.{rng.getrandbits(48):x}@example.com>\n"
        "MIME-Version: 1.0\n"
    ).encode()


def _multipart(head: bytes, parts: list[tuple[str, bytes]], subtype: str = "mixed") -> bytes:
    out = [head, f'Content-Type: multipart/{subtype}; boundary="b0"\n\n'.encode()]
    for headers, body in parts:
        out += [b"--b0\n", headers.encode(), b"\n\n", body, b"\n"]
    out.append(b"--b0--\n")
    return b"".join(out)


def _attachment(name: str, data: bytes) -> tuple[str, bytes]:
    headers = (
        "Content-Type: application/octet-stream\n"
        f'Content-Disposition: attachment; filename="{name}"\n'
        "Content-Transfer-Encoding: base64"
    )
    return headers, _b64(data)


def message(rng: random.Random, n: int, kind: str) -> bytes:
    head = _head(rng, n, kind)
    body = _text(rng, _log_uniform(rng, 2_000, 60_000))
    plain = ("Content-Type: text/plain; charset=us-ascii", body)
    if kind == "plain":
        return head + b"Content-Type: text/plain; charset=us-ascii\n\n" + body
    if kind == "alternative":
        html = b"<html><body><p>" + body.replace(b"\n", b"</p>\n<p>") + b"</p></body></html>\n"
        return _multipart(head, [plain, ("Content-Type: text/html", html)], "alternative")
    if kind == "attachment":
        blob = rng.randbytes(_log_uniform(rng, 100_000, 2_000_000))
        return _multipart(head, [plain, _attachment(f"data{n}.bin", blob)])
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in (
                ("notes.txt", _text(rng, 5_000)),
                ("blob.bin", rng.randbytes(_log_uniform(rng, 10_000, 300_000))),
            ):
                z.writestr(zipfile.ZipInfo(name, FIXED_TIME), data, zipfile.ZIP_DEFLATED)
        return _multipart(head, [plain, _attachment(f"files{n}.zip", buf.getvalue())])
    if kind == "eicar":
        return _multipart(head, [plain, _attachment("eicar.com", EICAR)])
    raise ValueError(kind)


def generate(directory: Path, count: int = 500, seed: int = 1) -> list[Path]:
    """Write ``count`` messages into ``directory`` (world-readable: clamd SCANs them)."""
    rng = random.Random(seed)
    kinds = [kind for kind, share in MIX for _ in range(round(share * count / 500))]
    kinds = (kinds + ["plain"] * count)[:count]
    rng.shuffle(kinds)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # noqa: S103 - clamd's own user reads it for CONTSCAN/SCAN
    paths = []
    for n, kind in enumerate(kinds):
        path = directory / f"msg-{n:04d}-{kind}.eml"
        path.write_bytes(message(rng, n, kind))
        os.chmod(path, 0o644)  # noqa: S103 - as above
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    paths = generate(args.dir, args.count, args.seed)
    sizes = sorted(p.stat().st_size for p in paths)
    print(
        f"{len(paths)} messages, {sum(sizes) / 1e6:.0f} MB, "
        f"median {sizes[len(sizes) // 2] / 1e3:.0f} KB, max {sizes[-1] / 1e6:.1f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
