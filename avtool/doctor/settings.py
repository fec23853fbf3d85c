"""Doctor checks: the settings of the backend's own clamd.conf that avtool's verdicts depend on.

- Alert*: without them clamd answers OK for an encrypted archive or document and for what it
  skips at its limits (MaxRecursion, MaxFileSize, MaxScanSize, MaxFiles): the mail is called
  clean, not unchecked (measured with Debian's generated clamd.conf: an encrypted zip holding
  EICAR and EICAR zipped 20 deep both came back ``OK``). ``ArchiveBlockEncrypted``, which
  Debian still writes, is deprecated and changes nothing (measured: ``true`` alone, still OK).
- The size limits against scan.max_size: a message avtool sends but clamd will not scan whole.
"""

from __future__ import annotations

from collections.abc import Iterator

from avtool.config import Config
from avtool.config import keys as K
from avtool.config.kinds import Size
from avtool.doctor.finding import Finding, Status
from avtool.engine.clamdconf import ClamdConf

_APPLY = "bash share/clamd-config.sh (or edit it), then restart clamd"


def check_alerts(cfg: Config, address: str, conf: ClamdConf) -> Iterator[Finding]:
    """clamd.conf's Alert* settings against policy.unchecked."""
    action = cfg[K.UNCHECKED]
    encrypted = conf.flag("AlertEncrypted")
    off = []
    if not (encrypted or conf.flag("AlertEncryptedArchive")):
        off.append(("AlertEncryptedArchive", "encrypted archives (zip, 7z, rar)"))
    if not (encrypted or conf.flag("AlertEncryptedDoc")):
        off.append(("AlertEncryptedDoc", "encrypted documents (PDF, Office)"))
    if not conf.flag("AlertExceedsMax"):
        depth = conf.get("MaxRecursion")
        off.append(("AlertExceedsMax", f"content past clamd's limits (nested over {depth} deep)"))
    if not off:
        yield Finding(
            "ok",
            f"clamd {address} reports encrypted and over-limit content ({conf.path}): "
            f"unchecked, policy.unchecked = {action}",
        )
        return
    what = "; ".join(w for _, w in off)
    names = " ".join(f"{n} yes" for n, _ in off)
    # policy.unchecked = pass: the mail is delivered either way, but as clean, with no field.
    # Any other action: the admin's choice does not happen at all.
    status: Status = "warn" if action == "pass" else "fail"
    outcome = (
        "no X-Virus-Status: Unchecked field"
        if action == "pass"
        else f"policy.unchecked = {action} never applies to them"
    )
    yield Finding(
        status,
        f"clamd {address}: {', '.join(n for n, _ in off)} off in {conf.path}: {what} come "
        f"back clean, not unchecked ({outcome})",
        f"set {names} in {conf.path}: {_APPLY}",
    )


def check_limits(cfg: Config, address: str, conf: ClamdConf, mode: str) -> Iterator[Finding]:
    """StreamMaxLength (INSTREAM), MaxFileSize and MaxScanSize against scan.max_size."""
    ours = cfg[K.MAX_SIZE]
    shown = Size().to_toml(ours).strip('"')
    alert = conf.flag("AlertExceedsMax")
    bad = False
    if mode == "INSTREAM" and conf.size("StreamMaxLength") < ours:
        bad = True
        yield Finding(
            "fail",
            f"clamd {address}: StreamMaxLength {conf.get('StreamMaxLength')} < scan.max_size "
            f"{shown} ({conf.path}): messages in between come back unchecked",
            f"set StreamMaxLength {shown} in {conf.path}, or lower scan.max_size",
        )
    for name in ("MaxFileSize", "MaxScanSize"):
        if conf.size(name) >= ours:
            continue
        bad = True
        if alert:
            yield Finding(
                "warn",
                f"clamd {address}: {name} {conf.get(name)} < scan.max_size {shown} "
                f"({conf.path}): larger messages are not scanned whole (unchecked)",
                f"set {name} {shown} in {conf.path} and restart clamd, or lower scan.max_size",
            )
        else:
            yield Finding(
                "warn",
                f"clamd {address}: {name} {conf.get(name)} < scan.max_size {shown} and "
                f"AlertExceedsMax is off ({conf.path}): clamd says OK for what it skips",
                f"set {name} {shown} (and AlertExceedsMax yes) in {conf.path}, restart clamd",
            )
    if not bad:
        yield Finding("ok", f"clamd {address}: limits allow scan.max_size {shown}")
