"""Run by the site's rucio client Python (not the pilot's): one rucio-clients API call, one JSON answer.

    python3 -c "<this module's source>" {download|upload|stat|remove|turl|pfn} '<json arguments>'

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
from typing import Any, Optional

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
    """Many DIDs in one client call: {"files": [{scope, name, rse, dir}, ...]} -> {"files": [<outcome>, ...]}
    in that order, each {"ok": true, path, fsize, adler32} or {"ok": false, failure, diag}. A call the client
    refuses as a whole (one DID unknown to the catalogue, say) is made again file by file, so that each
    file gets its own outcome."""
    files = args["files"]
    timeout = int(args.get("timeout") or 600)
    try:
        return {"files": _download(files, timeout)}
    except Exception as exc:  # noqa: BLE001 - the whole call failed: each file on its own
        if len(files) == 1:
            return {"files": [_failed(exc)]}
    outcomes = []
    for one in files:
        try:
            outcomes += _download([one], timeout)
        except Exception as exc:  # noqa: BLE001 - this file's outcome
            outcomes.append(_failed(exc))
    return {"files": outcomes}


def _download(files: list[dict[str, Any]], timeout: int) -> list[dict[str, Any]]:
    from rucio.client.downloadclient import DownloadClient

    items = []
    for one in files:
        item = {"did": f"{one['scope']}:{one['name']}", "base_dir": one["dir"], "no_subdir": True,
                "transfer_timeout": timeout}
        if one.get("rse"):
            item["rse"] = one["rse"]
        items.append(item)
    traces: list[dict[str, Any]] = []
    result = DownloadClient(logger=_quiet(), tracing=False).download_dids(
        items, traces_copy_out=traces, deactivate_file_download_exceptions=True)
    by_did = {str(entry.get("did")): entry for entry in result}
    outcomes = []
    for one in files:
        entry = by_did.get(f"{one['scope']}:{one['name']}", {})
        if _state(entry.get("clientState")) in ("DONE", "ALREADY_DONE"):
            path = (entry.get("dest_file_paths") or [os.path.join(one["dir"], one["name"])])[0]
            outcomes.append({"ok": True, "path": path, "fsize": os.path.getsize(path),
                             "adler32": entry.get("adler32") or ""})
            continue
        trace = _trace_of(traces, one)
        state = _state(trace.get("clientState") or entry.get("clientState"))
        reason = " ".join(str(trace.get("stateReason") or f"download ended in state {state or 'unknown'}").split())
        outcomes.append({"ok": False, "failure": STATES.get(state) or _failure_text(reason), "diag": reason[:400]})
    return outcomes


def upload(args: dict[str, Any]) -> dict[str, Any]:
    """Many files in one client call: {"files": [{scope, name, rse, path, guid}, ...], "register"} ->
    {"files": [<outcome>, ...]} in that order, each {"ok": true, pfn, fsize, adler32} or {"ok": false,
    failure, diag}. A DID the client finds at the RSE already is skipped by it: never replaced (exists)."""
    from rucio.client.uploadclient import UploadClient

    register = bool(args.get("register"))
    items = []
    for one in args["files"]:
        item = {"path": one["path"], "rse": one["rse"], "did_scope": one["scope"], "did_name": one["name"],
                "no_register": not register, "register_after_upload": register,
                "transfer_timeout": int(args.get("timeout") or 600)}
        if one.get("guid"):
            item["guid"] = one["guid"]
        items.append(item)
    traces: list[dict[str, Any]] = []
    summary = os.path.join(tempfile.mkdtemp(prefix="rucio-upload-"), "summary.json")
    error: Optional[BaseException] = None
    try:
        UploadClient(logger=_quiet(), tracing=False).upload(items, summary_file_path=summary, traces_copy_out=traces)
    except Exception as exc:  # noqa: BLE001 - per file below
        error = exc
    try:
        with open(summary) as handle:
            done = json.load(handle)
    except (OSError, ValueError):
        done = {}
    finally:
        shutil.rmtree(os.path.dirname(summary), ignore_errors=True)
    outcomes = []
    for position, one in enumerate(args["files"]):
        entry = done.get(f"{one['scope']}:{one['name']}")
        if entry is not None:
            outcomes.append({"ok": True, "pfn": entry.get("pfn", ""), "fsize": entry.get("bytes"),
                             "adler32": entry.get("adler32") or ""})
            continue
        # one trace per file, in order (a file the client skips has no file name in its trace yet)
        trace = traces[position] if len(traces) == len(items) else _trace_of(traces, one)
        reason = " ".join(str(trace.get("stateReason") or "").split())
        if _state(trace.get("clientState")) != "FAILED" and (reason == "File already exists" or error is None):
            outcomes.append({"ok": False, "failure": "exists",
                             "diag": f"{one['scope']}:{one['name']} is at {one['rse']} already: not replaced"})
        else:
            _remove_upload_leftover(one)
            outcomes.append({"ok": False, "failure": _failure_text(reason), "diag": reason[:400]} if reason
                            else _failed(error or RuntimeError("not uploaded")))
    return {"files": outcomes}


def _remove_upload_leftover(one: dict[str, Any]) -> None:
    """A failed upload leaves the client's temporary `<pfn>.rucio.upload` (a storage that filled up, a
    lost connection): it goes now, not at the client's next upload of that DID, which may never come."""
    try:
        protocol, pfn = _protocol(one, "delete")
        if protocol.exists(f"{pfn}.rucio.upload"):
            protocol.delete(f"{pfn}.rucio.upload")
    except Exception:  # noqa: BLE001 - best effort: the upload's own failure is what is reported
        pass


def _trace_of(traces: list[dict[str, Any]], one: dict[str, Any]) -> dict[str, Any]:
    """The client's trace of this file (the last one: a retried download has several)."""
    mine = [trace for trace in traces if trace.get("filename") == one["name"] and trace.get("scope") == one["scope"]]
    return mine[-1] if mine else {}


def _state(value: Any) -> str:
    """A client state (the download client's are enum members) as its name."""
    return str(getattr(value, "value", value) or "")


def _failed(exc: BaseException) -> dict[str, Any]:
    return {"ok": False, "failure": _failure(exc), "diag": _diag(exc)}


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


def pfn(args: dict[str, Any]) -> dict[str, Any]:
    """Where the RSE's protocol keeps the DID (its delete protocol: what may remove files there)."""
    return {"pfn": _protocol(args, "delete")[1]}


def _failure(exc: BaseException) -> str:
    for klass in type(exc).__mro__:
        if klass.__name__ in FAILURES:
            return FAILURES[klass.__name__]
    return _failure_text(str(exc))


def _failure_text(text: str) -> str:
    """A failure from the words of a storage error (the client passes the protocol's message on)."""
    text = text.lower()
    if "checksum" in text:
        return "checksum_mismatch"
    if "no such file" in text or "not found" in text:
        return "not_found"
    if "read-only file system" in text or "permission denied" in text or "not authorized" in text:
        return "auth"
    if "no space left" in text or "quota exceeded" in text:
        return "no_space"
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


COMMANDS = {"download": download, "upload": upload, "stat": stat, "remove": remove, "turl": turl, "pfn": pfn}


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
