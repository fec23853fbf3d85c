"""SMTP throughput through a real Courier: with avtool enabled vs no filter, same run.

Uses the e2e harness (tests/e2e/courier.sh: Courier on 127.0.0.1:2525) and avtool as
share/install.sh installs it (run that first; it is README's first command). Small messages,
S concurrent senders, one SMTP connection per message; a run ends when every message is in
the Maildir. Rounds alternate (no filter, avtool, no filter, avtool, ...) and the best round of
each is compared. Target: avtool / no filter >= 0.90 (the filter should be invisible).

    python bench/courier.py [--messages 400] [--senders 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.engine import machine  # noqa: E402
from tests.e2e import harness  # noqa: E402


def one_round(messages: int, senders: int) -> float:
    """Send ``messages`` with ``senders`` threads; seconds until all are delivered."""
    harness.courier("reset")
    turn = iter(range(messages))
    lock = threading.Lock()
    failures: list[str] = []

    def sender() -> None:
        while True:
            with lock:
                i = next(turn, None)
            if i is None:
                return
            code, text = harness.send(harness.make_message(f"bench {i}", "Hello.\n" * 20))
            if code != 250:
                failures.append(f"{code} {text}")

    started = time.perf_counter()
    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    harness.wait_for_mail(messages, timeout=300)
    took = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} failed, e.g. {failures[0]}")
    return took


def run(messages: int, senders: int, rounds: int) -> dict[str, list[float]]:
    """Alternate rounds without and with avtool; the rates of each (msg/s)."""
    harness.courier("up")
    rates: dict[str, list[float]] = {"no filter": [], "avtool": []}
    try:
        for _ in range(rounds):
            for name in rates:
                harness.courier("reset")
                if name == "avtool":
                    harness.filterctl("start", "avtool", timeout=10)
                took = one_round(messages, senders)
                rates[name].append(messages / took)
                print(f"{name:10} {messages / took:7.1f} msg/s ({took:.1f} s)", flush=True)
                if name == "avtool":
                    harness.filterctl("stop", "avtool", timeout=10)
    finally:
        harness.courier("reset")
        harness.courier("down")
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "courier.json")
    args = parser.parse_args(argv)
    if not Path("/usr/lib/courier/filters/avtool").exists():
        print("run share/install.sh first", file=sys.stderr)
        return 2
    with harness.exclusive():
        rates = run(args.messages, args.senders, args.rounds)
    ratio = max(rates["avtool"]) / max(rates["no filter"])
    verdict = "ok" if ratio >= 0.90 else "MISSED"
    print(f"machine: {machine()}")
    print(
        f"{args.messages} messages, {args.senders} senders: best no filter "
        f"{max(rates['no filter']):.1f} msg/s, best avtool {max(rates['avtool']):.1f} msg/s"
    )
    print(f"avtool / no filter: {ratio:.3f} (>= 0.90) {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "rates": rates, "ratio": ratio}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
