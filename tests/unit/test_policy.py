"""policy.decide: verdicts, configs and envelopes -> action, reply, headers, recipients."""

from __future__ import annotations

import pytest

from avtool.config import Config
from avtool.courier.control import Envelope, Recipient
from avtool.daemon import policy
from avtool.engine.verdict import Clean, Failed, Infected, Unchecked


def envelope(*addresses: str, auth: str | None = None, relay: bool = False) -> Envelope:
    rcpts = tuple(
        Recipient(a, "", "", "/spool/1/c", i, a.startswith("done")) for i, a in enumerate(addresses)
    )
    return Envelope(
        "s@example.com", rcpts or (Recipient("r@example.test", "", "", "/c", 0, False),),
        "M1", None, "esmtp", auth, relay, "192.0.2.1",
    )  # fmt: skip


def cfg(**values: str) -> Config:
    return Config.resolve(env={}, overrides={k.replace("__", "."): v for k, v in values.items()})


EICAR = Infected(("Eicar-Test-Signature.UNOFFICIAL",))


@pytest.mark.parametrize(
    ("verdict", "settings", "action", "code"),
    [
        (Clean(), {}, "accept", 200),
        (EICAR, {}, "reject", 550),
        (EICAR, {"policy__infected": "drop"}, "drop", 200),
        (EICAR, {"policy__infected": "quarantine"}, "quarantine", 200),
        (EICAR, {"policy__infected": "pass"}, "pass", 200),
        (EICAR, {"policy__infected": "defer"}, "defer", 451),
        (Unchecked("too large"), {}, "pass", 200),
        (Unchecked("encrypted archive"), {"policy__unchecked": "reject"}, "reject", 550),
        (Failed("clamd down"), {}, "defer", 432),
        (Failed("clamd down"), {"policy__failed": "pass"}, "pass", 200),
    ],
)
def test_default_actions(verdict: object, settings: dict[str, str], action: str, code: int) -> None:
    d = policy.decide(verdict, envelope(), cfg(**settings))  # type: ignore[arg-type]
    assert (d.action, d.code) == (action, code)
    assert "\n" not in d.text and "\r" not in d.text


def test_reject_text_names_the_virus_without_unofficial_suffix() -> None:
    d = policy.decide(EICAR, envelope(), cfg())
    assert d.text == "5.7.1 Virus found: Eicar-Test-Signature"
    custom = policy.decide(EICAR, envelope(), cfg(policy__reject_text="No {virus} here"))
    assert custom.text == "5.7.1 No Eicar-Test-Signature here"


@pytest.mark.parametrize(
    ("names", "settings", "action"),
    [
        (("Win.Test.EICAR_HDB-1",), {"policy__pass": "Win.Test.*"}, "pass"),
        (("Eicar-Test-Signature.UNOFFICIAL",), {"policy__pass": "Eicar-Test-Signature"}, "pass"),
        (("A.x", "B.y"), {"policy__pass": "A.*", "policy__drop": "B.*"}, "drop"),  # most severe
        (("A.x",), {"policy__pass": "A.*", "policy__quarantine": "A.x"}, "quarantine"),
        (("A.x", "B.y"), {"policy__pass": "A.*,B.*"}, "pass"),
        (("A.x", "B.y"), {"policy__pass": "A.*"}, "reject"),  # B.y falls to the default
        (("PUA.Pdf.Trojan-1",), {"policy__pua": "pass"}, "pass"),
        (("PUA.Pdf.Trojan-1",), {}, "reject"),  # pua = infected: as policy.infected
        (("Heuristics.Phishing.Email",), {"policy__heuristics": "defer"}, "defer"),
        (("win.test.x",), {"policy__pass": "Win.*"}, "reject"),  # case-sensitive, as clamd
    ],
)
def test_patterns_and_severity(
    names: tuple[str, ...], settings: dict[str, str], action: str
) -> None:
    assert policy.action_for(names, cfg(**settings)) == action


def test_pass_recipients_keep_the_message_others_are_dropped() -> None:
    env = envelope("a@example.test", "Postmaster@Example.test", "b@example.test")
    d = policy.decide(EICAR, env, cfg(policy__pass_recipients="postmaster@*"))
    assert d.action == "drop" and d.code == 200
    assert [r.address for r in d.drop] == ["a@example.test", "b@example.test"]
    assert [r.address for r in d.keep] == ["Postmaster@Example.test"]
    assert d.headers[0][0] == "X-Virus-Status" and "Infected" in d.headers[0][1]


def test_only_pass_recipients_means_pass() -> None:
    d = policy.decide(
        EICAR, envelope("postmaster@x.test"), cfg(policy__pass_recipients="postmaster@*")
    )
    assert d.action == "pass" and not d.drop


def test_recipients_already_delivered_are_not_marked_again() -> None:
    d = policy.decide(EICAR, envelope("done@x.test", "a@x.test"), cfg(policy__infected="drop"))
    assert [r.address for r in d.drop] == ["a@x.test"]


def test_fail_open_is_flagged_and_marked() -> None:
    d = policy.decide(Failed("timeout"), envelope(), cfg(policy__failed="pass"))
    assert d.fail_open and d.headers == (("X-Virus-Status", "Unchecked (scan failed: timeout)"),)


def test_clean_header_only_when_asked() -> None:
    assert policy.decide(Clean(), envelope(), cfg()).headers == ()
    fields = dict(policy.decide(Clean(), envelope(), cfg(headers__clean="true")).headers)
    assert fields["X-Virus-Status"] == "Clean" and fields["X-Virus-Scanned"].startswith("avtool ")


@pytest.mark.parametrize(
    ("env", "settings", "exempt"),
    [
        (envelope(auth="alice"), {"policy__skip_authenticated": "true"}, True),
        (envelope(auth="alice"), {}, False),
        (envelope(relay=True), {"policy__skip_relay_clients": "true"}, True),
        (
            envelope(),
            {"policy__skip_relay_clients": "true", "policy__skip_authenticated": "true"},
            False,
        ),
    ],
)
def test_exemptions(env: Envelope, settings: dict[str, str], exempt: bool) -> None:
    assert (policy.exemption(env, cfg(**settings)) is not None) is exempt


def test_control_characters_in_names_cannot_break_the_reply() -> None:
    d = policy.decide(Infected(("Evil\r\n250 Ok",)), envelope(), cfg())
    assert "\r" not in d.text and "\n" not in d.text and d.code == 550


@pytest.mark.parametrize(
    ("names", "settings", "hides"),
    [
        (("Eicar-Test-Signature",), {}, False),  # reject is already the strongest
        (("Avtool.Pass.Test",), {"policy__pass": "Avtool.*"}, True),
        (("PUA.Win.Packer.Upx",), {"policy__pua": "pass"}, True),
        (("PUA.Win.Packer.Upx",), {"policy__pua": "defer"}, True),  # defer: weaker than reject
        (("PUA.Win.Packer.Upx",), {"policy__pua": "drop"}, False),  # drop outranks reject
        (("Eicar",), {"policy__quarantine": "Win.Trojan.*"}, True),  # a hidden one could outrank
        (("Heuristics.Phishing.Email",), {"policy__heuristics": "pass"}, True),
        (("Avtool.Pass.Test", "Eicar"), {"policy__pass": "Avtool.*"}, False),  # all names known
        (("Eicar",), {"policy__infected": "pass"}, False),  # nothing could be stronger
    ],
)
def test_hides_when_a_name_clamd_did_not_report_could_be_more_severe(
    names: tuple[str, ...], settings: dict[str, str], hides: bool
) -> None:
    assert policy.hides(Infected(names), cfg(**settings)) is hides
    assert policy.hides(Unchecked("encrypted archive: Heuristics.Encrypted.Zip"), cfg()) is False
