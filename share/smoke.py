"""Two test mails through Courier by SMTP: a clean one must be delivered, EICAR rejected.

Run by share/install.sh:  python share/smoke.py --to USER@DOMAIN --maildir DIR [--host H --port P]
"""

from __future__ import annotations

import argparse
import smtplib
import sys
import time
import uuid
from pathlib import Path

# Built in two parts so that this file is not itself flagged.
EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def send(host: str, port: int, to: str, subject: str, body: str) -> tuple[int, str]:
    message = f"From: avtool-install@localhost\nTo: {to}\nSubject: {subject}\n\n{body}\n"
    try:
        with smtplib.SMTP(host, port, timeout=120) as smtp:
            smtp.sendmail("", [to], message)  # null sender: no DNS check of a sender domain
    except smtplib.SMTPResponseException as e:
        return e.smtp_code, e.smtp_error.decode(errors="replace")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = next(iter(e.recipients.values()))
        return code, text.decode(errors="replace")
    return 250, "accepted"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--to", required=True)
    parser.add_argument("--maildir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=25)
    args = parser.parse_args()
    token = uuid.uuid4().hex
    ok = True

    code, text = send(args.host, args.port, args.to, f"avtool smoke test {token}", "Hello.")
    delivered = None
    deadline = time.monotonic() + 60
    while code == 250 and delivered is None and time.monotonic() < deadline:
        for path in (args.maildir / "new").iterdir():
            if token in path.read_text(errors="replace"):
                delivered = path
        time.sleep(0.2)
    if delivered is not None:
        print(f"clean mail: {code} {text}; delivered to {delivered}")
    else:
        print(f"clean mail: {code} {text}; NOT delivered to {args.maildir}", file=sys.stderr)
        ok = False

    code, text = send(args.host, args.port, args.to, "avtool smoke test: EICAR", EICAR)
    if 500 <= code < 600:
        print(f"EICAR mail: rejected: {code} {text}")
    else:
        print(f"EICAR mail: NOT rejected: {code} {text}", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
