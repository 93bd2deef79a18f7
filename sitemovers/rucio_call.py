"""Run by the site's rucio client Python (not the pilot's): one rucio-clients API call, one JSON answer.

    python3 -c "<this module's source>" {download|upload|stat|remove|turl} '<json arguments>'

The pilot reads this source as package data (it may live inside the one-file bundle, where no path
names it) and hands it over with `-c`; `python3 rucio_call.py ...` does the same from a checkout.

Standard library and rucio-clients only, so that any interpreter with rucio-clients runs it (the one a
site's setup script puts on PATH). The answer is one JSON object on the last line of stdout:
{"ok": true, ...} with exit code 0, or {"ok": false, "failure": <sitemovers Failure value>, "diag": ...}
with exit code 1. The client's own traces are off: the pilot sends one trace per transfer itself.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run with -c, the current directory comes first on sys.path; run as a script, this file's directory
    # (which holds the pilot's rucio.py). Neither may shadow a module: the client's `rucio` package and
    # the standard library must win over whatever a work directory holds. (os and sys are loaded already.)
    _shadows = {os.path.abspath(os.curdir)}
    if "__file__" in globals():
        _shadows.add(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:] = [_entry for _entry in sys.path if os.path.abspath(_entry or os.curdir) not in _shadows]

import json
import logging
import shutil
import tempfile
from typing import Any

FAILURES = {  # rucio exception class name -> sitemovers Failure value
    "DataIdentifierNotFound": "not_found",
    "SourceNotFound": "not_found",
    "RSENotFound": "unsupported",
    "InvalidObject": "unsupported",  # e.g. a name Rucio's DID schema refuses
    "FileReplicaAlreadyExists": "exists",
    "DataIdentifierAlreadyExists": "exists",
    "FileAlreadyExists": "exists",
    "DestinationNotAccessible": "failed",
    "AccessDenied": "auth",
    "CannotAuthenticate": "auth",
    "InsufficientAccountLimit": "no_space",
    "ChecksumCalculationError": "checksum_mismatch",
    "RucioException": "failed",
}
STATES = {"FAIL_VALIDATE": "checksum_mismatch", "FILE_NOT_FOUND": "not_found", "SERVICE_ERROR": "failed"}


class Failed(Exception):
    def __init__(self, failure: str, diag: str) -> None:
        super().__init__(diag)
        self.failure = failure
        self.diag = diag


def _protocol(args: dict[str, Any], operation: str) -> tuple[Any, str]:
    from rucio.rse import rsemanager

    info = rsemanager.get_rse_info(args["rse"])
    protocol = rsemanager.create_protocol(info, operation, auth_token=None)
    protocol.connect()
    pfn = list(protocol.lfns2pfns({"scope": args["scope"], "name": args["name"]}).values())[0]
    return protocol, pfn


def download(args: dict[str, Any]) -> dict[str, Any]:
    from rucio.client.downloadclient import DownloadClient

    traces: list[dict[str, Any]] = []
    item = {"did": f"{args['scope']}:{args['name']}", "base_dir": args["dir"], "no_subdir": True,
            "transfer_timeout": int(args.get("timeout") or 600)}
    if args.get("rse"):
        item["rse"] = args["rse"]
    try:
        result = DownloadClient(logger=_quiet(), tracing=False).download_dids([item], traces_copy_out=traces)
    except Exception as exc:
        states = [trace.get("clientState", "") for trace in traces]
        reasons = [str(trace.get("stateReason") or "") for trace in traces if trace.get("stateReason")]
        failure = next((STATES[s] for s in states if s in STATES), _failure(exc))
        raise Failed(failure, "; ".join(reasons[-1:]) or _diag(exc)) from None
    entry = result[0]
    path = (entry.get("dest_file_paths") or [os.path.join(args["dir"], args["name"])])[0]
    return {"path": path, "fsize": os.path.getsize(path), "adler32": entry.get("adler32") or ""}


def upload(args: dict[str, Any]) -> dict[str, Any]:
    from rucio.client.uploadclient import UploadClient

    register = bool(args.get("register"))
    item = {"path": args["path"], "rse": args["rse"], "did_scope": args["scope"], "did_name": args["name"],
            "no_register": not register, "register_after_upload": register,
            "transfer_timeout": int(args.get("timeout") or 600)}
    if args.get("guid"):
        item["guid"] = args["guid"]
    summary = os.path.join(tempfile.mkdtemp(prefix="rucio-upload-"), "summary.json")
    try:
        UploadClient(logger=_quiet(), tracing=False).upload([item], summary_file_path=summary)
        with open(summary) as handle:
            done = next(iter(json.load(handle).values()))
    except Exception as exc:
        raise Failed(_failure(exc), _diag(exc)) from None
    finally:
        shutil.rmtree(os.path.dirname(summary), ignore_errors=True)
    return {"pfn": done.get("pfn", ""), "fsize": done.get("bytes"), "adler32": done.get("adler32") or ""}


def stat(args: dict[str, Any]) -> dict[str, Any]:
    protocol, pfn = _protocol(args, "read")
    try:
        if not protocol.exists(pfn):
            return {"exists": False, "pfn": pfn}
        info = protocol.stat(pfn)
    except Exception as exc:
        if _failure(exc) == "not_found":
            return {"exists": False, "pfn": pfn}
        raise Failed(_failure(exc), _diag(exc)) from None
    return {"exists": True, "pfn": pfn, "fsize": info.get("filesize"), "adler32": info.get("adler32") or ""}


def remove(args: dict[str, Any]) -> dict[str, Any]:
    protocol, pfn = _protocol(args, "delete")
    try:
        protocol.delete(pfn)
    except Exception as exc:
        if _failure(exc) != "not_found":
            raise Failed(_failure(exc), _diag(exc)) from None
    return {"pfn": pfn}


def turl(args: dict[str, Any]) -> dict[str, Any]:
    return {"pfn": _protocol(args, "read")[1]}


def _failure(exc: BaseException) -> str:
    for klass in type(exc).__mro__:
        if klass.__name__ in FAILURES:
            return FAILURES[klass.__name__]
    text = str(exc).lower()
    if "checksum" in text:
        return "checksum_mismatch"
    if "no such file" in text or "not found" in text:
        return "not_found"
    return "failed"


def _diag(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:400]


class _Logger(logging.Logger):
    """The clients take a logger in two shapes (an object with .log, and the function itself): both."""

    def __call__(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(level, msg, *args, **kwargs)


def _quiet() -> Any:
    logger = _Logger("pilot-rucio-call", logging.WARNING)
    logger.addHandler(logging.StreamHandler(sys.stderr))
    return logger


COMMANDS = {"download": download, "upload": upload, "stat": stat, "remove": remove, "turl": turl}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in COMMANDS:
        print(json.dumps({"ok": False, "failure": "unsupported", "diag": f"usage: {argv[0]} "
                          f"{{{'|'.join(COMMANDS)}}} JSON"}))
        return 2
    try:
        answer = {"ok": True, **COMMANDS[argv[1]](json.loads(argv[2]))}
        code = 0
    except Failed as exc:
        answer, code = {"ok": False, "failure": exc.failure, "diag": exc.diag}, 1
    except ImportError as exc:
        answer, code = {"ok": False, "failure": "setup", "diag": f"rucio-clients not importable: {exc}"}, 1
    except Exception as exc:  # noqa: BLE001 - one answer, never a traceback
        answer, code = {"ok": False, "failure": _failure(exc), "diag": _diag(exc)}, 1
    print(json.dumps(answer))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
