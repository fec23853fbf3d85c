"""Faults under load through the real Courier: the short CI versions of bench/faults.py.

Each test sends 60 messages by SMTP (4 senders, 12 msg/s, every tenth infected: quarantined,
rejected or dropped by policy in turn) while one fault happens at the midpoint, then accounts
for every message against the Maildir, the quarantine dir and the SMTP replies. The invariant:
no infected message delivered, no clean message lost, every message ends as its policy says,
at once or after the sender's 4xx retries. Each test also checks that its fault was felt, so
that a fault that silently did nothing cannot pass. ``python bench/faults.py`` runs the same
faults with 1,000 messages.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import faults
from tests.e2e import harness

pytestmark = pytest.mark.e2e

MESSAGES = 60
RATE = 12.0
INFECTED = 0.1


@pytest.fixture(scope="module")
def rig(courier_session: float) -> Iterator[faults.Rig]:
    """Our two clamds and the ``avfaults`` filter (the code of this tree) in Courier; the
    /opt/avtool venv of share/install.sh (test_avtool.py runs it first; Rig.setup if not)."""
    workdir = Path(tempfile.mkdtemp(prefix="avfaults", dir="/tmp"))
    r = faults.Rig(workdir)
    try:
        r.setup()
        yield r
    finally:
        r.teardown()
        harness.courier("reset")


def run(rig: faults.Rig, fault: faults.Fault) -> faults.Result:
    result = faults.run_fault(rig, fault, messages=MESSAGES, infected=INFECTED, rate=RATE)
    print(faults.table([result]), result.notes, result.phases)
    assert result.violations == [], "\n".join(result.violations)
    outcomes = result.delivered + result.rejected + result.quarantined + result.dropped
    assert outcomes == result.sent == MESSAGES
    # every kind of message was there: clean, and each infected kind
    assert result.delivered and result.rejected and result.quarantined and result.dropped
    return result


@pytest.mark.parametrize(
    "name", ["clamd-kill", "clamd-sigstop", "clamd-garbage", "filter-kill", "stdin-drain"]
)
def test_fault_defers_then_every_message_ends_as_its_policy_says(
    rig: faults.Rig, name: str
) -> None:
    result = run(rig, faults.FAULTS[name]())
    assert result.retries > 0, "the fault was not felt: no 4xx at all"
    assert result.deferred_then_ok > 0


def test_second_backend_takes_over_without_a_single_4xx(rig: faults.Rig) -> None:
    mark = harness.log_mark()
    result = run(rig, faults.ClamdFailover())
    assert result.retries == 0
    # the first backend really died under load: the filter set it aside and went on
    assert f"clamd {rig.clamds[0].unix_socket} failed, set aside" in harness.read_log(mark)


def test_reload_storm_answers_and_defers_nothing(rig: faults.Rig) -> None:
    fault = faults.ReloadStorm()
    result = run(rig, fault)
    assert fault.codes.get(0, 0) >= 1, fault.codes  # reloads were answered during the load
    assert result.retries == 0


def test_full_quarantine_defers_and_loses_nothing(rig: faults.Rig) -> None:
    fault = faults.QuarantineFull()
    run(rig, fault)
    assert fault.probe is not None and 400 <= fault.probe < 500, fault.notes
