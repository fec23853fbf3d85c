"""avtool/courier/archives.py: the members of a zip that clamd takes for mail, and every way a
zip cannot be looked inside ending in a reason (the message unchecked), never in "nothing here".
The attacks themselves (a fragment in a zip, in a zip in a zip) are tests/support/evasion.py
FRAGMENTS, run against the real clamd and the daemon."""

from __future__ import annotations

import base64
import io
import lzma
import struct
import zipfile

import pytest

from avtool.courier import archives
from avtool.courier.fieldsearch import looks_like_mail
from avtool.courier.unscannable import DECODE_BUDGET, PARTIAL, find_in
from avtool.engine import secondlook
from tests.support import evasion

MAIL = b"From: a@b\nSubject: s\n\n" + b"text line\n" * 500  # bigger than MAIL_HEAD
FRAGMENT = b"From: a@b\nContent-Type: message/partial; number=1\n\nfragment\n"


def _zip(*members: tuple[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def _mail_with(archive: bytes) -> bytes:
    part = b"Content-Type: application/zip\nContent-Transfer-Encoding: base64\n\n"
    return evasion.message([evasion.TEXT, part + base64.encodebytes(archive)])


class Room:
    """archives.Budget: ``size`` bytes."""

    def __init__(self, size: int) -> None:
        self.left = size

    def room(self) -> int:
        return self.left

    def take(self, size: int) -> None:
        self.left -= size


def _members(data: bytes, budget: int = 1 << 20) -> list[bytes]:
    return list(archives.mail_members(data, looks_like_mail, Room(budget)))


def test_the_members_that_look_like_mail_whole_and_only_them() -> None:
    data = _zip(("a.eml", MAIL), ("b.bin", bytes(range(256)) * 4), ("c.txt", b"plain words\n"))
    assert _members(data) == [MAIL]


def test_a_zip_in_a_zip_is_opened_to_the_depth_limit_then_unreadable() -> None:
    data = _zip(("m.eml", FRAGMENT))
    for depth in range(archives.MAX_ZIP_DEPTH - 1):
        data = _zip((f"z{depth}.zip", data))
    assert _members(data) == [FRAGMENT]
    with pytest.raises(archives.Unreadable, match="nested too deep"):
        _members(_zip(("deeper.zip", data)))
    assert find_in(_mail_with(data)) == PARTIAL
    assert (
        find_in(_mail_with(_zip(("deeper.zip", data)))) == "zip archives nested too deep to check"
    )


def test_a_damaged_zip_is_unreadable_not_clean() -> None:
    data = _zip(("m.eml", FRAGMENT))[:-30]  # the central directory cut short
    assert data.startswith(archives.ZIP)
    with pytest.raises(archives.Unreadable):
        _members(data)
    assert find_in(_mail_with(data)) == "a zip archive that cannot be read to check"


def test_a_compression_the_stdlib_lacks_is_unreadable() -> None:
    data = bytearray(_zip(("m.eml", FRAGMENT)))
    for header, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # the method, in both headers
        start = data.find(header)
        struct.pack_into("<H", data, start + at, 9)  # Deflate64
    assert find_in(_mail_with(bytes(data))) == "a zip member that cannot be read to check"


def test_the_byte_budget_bounds_a_zip_bomb() -> None:
    data = _zip(("big.eml", MAIL * 100))
    with pytest.raises(archives.Unreadable, match="too many bytes"):
        _members(data, budget=len(MAIL))
    assert _members(data, budget=len(MAIL) * 200) == [MAIL * 100]


def test_an_encrypted_member_is_passed_over() -> None:
    data = bytearray(_zip(("m.eml", FRAGMENT)))
    for header, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # general purpose flags
        start = data.find(header)
        flags = struct.unpack_from("<H", data, start + at)[0]
        struct.pack_into("<H", data, start + at, flags | 0x1)
    assert _members(bytes(data)) == []
    assert find_in(_mail_with(bytes(data))) is None


def test_too_many_members() -> None:
    data = _zip(*((f"{n}.txt", b"") for n in range(archives.MAX_MEMBERS + 1)))
    assert find_in(_mail_with(data)) == "too many zip members to check"


def test_mail_in_zips_in_mail_is_bounded_by_the_message_depth() -> None:
    """A zip holding mail whose attachment is a zip holding mail..., past MAX_DEPTH: unchecked."""
    inner = FRAGMENT
    for _ in range(6):
        archive = _zip(("m.eml", inner))
        inner = _mail_with(archive)
    assert find_in(inner) == "message/rfc822 nested too deep to check"


def test_one_budget_for_all_the_zips_of_a_message() -> None:
    """Many parts, each a small zip holding a big stored zip (a zip bomb each): together past
    DECODE_BUDGET, so unchecked, not each part given the whole budget again (CPU for nothing)."""
    big = _zip(("zeros.bin", bytes(4 << 20)), method=zipfile.ZIP_STORED)
    bomb = _zip(("inner.zip", big))
    assert len(bomb) < 64 << 10
    part = b"Content-Type: application/zip\nContent-Transfer-Encoding: base64\n\n"
    count = DECODE_BUDGET // len(big) + 1
    mail = evasion.message([evasion.TEXT] + [part + base64.encodebytes(bomb)] * count)
    assert find_in(mail) == "too many bytes in zip archives to check"
    fewer = evasion.message([evasion.TEXT] + [part + base64.encodebytes(bomb)] * (count - 2))
    assert find_in(fewer) is None


def test_the_second_look_passes_over_a_member_it_cannot_unpack() -> None:
    """engine/secondlook.py shares open_zip and BROKEN: a damaged LZMA member (whose error the
    second look once let escape) is passed over, the good member still given."""
    data = bytearray(_zip(("bad.txt", b"x" * 4000), method=zipfile.ZIP_LZMA))
    start = data.find(b"PK\x03\x04")
    name_len, extra_len = struct.unpack_from("<HH", data, start + 26)
    body = start + 30 + name_len + extra_len
    data[body + 20 : body + 40] = b"\xff" * 20  # the compressed stream, garbled
    good = _zip(("good.txt", b"fine"))
    with pytest.raises(lzma.LZMAError):
        zipfile.ZipFile(io.BytesIO(bytes(data))).read("bad.txt")
    members = list(secondlook._zip_members(bytes(data), [10, 1 << 20]))
    assert members == []
    assert list(secondlook._zip_members(good, [10, 1 << 20])) == [b"fine"]
