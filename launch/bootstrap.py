"""The bundle's __main__: make psutil importable, then run the pilot's command line.

psutil is the one dependency with compiled code. The node's own psutil is used when there is one;
otherwise the copy bundled from the manylinux x86_64 wheel (under _native/ in the archive, abi3, so any
CPython >= 3.6 loads it) is unpacked once into a private cache directory, keyed by the bundle's content,
and put on sys.path. This file runs on the node's python3 (>= 3.9): standard library only.
"""

import hashlib
import os
import shutil
import sys
import tempfile
import zipfile

NATIVE = "_native/"


def _private_dir(path):
    """A directory only this user can write to (created 0700); None when it is not."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return None
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return None
    return path


def _cache_base():
    explicit = os.environ.get("PANDAPILOT_NATIVE_CACHE")
    if explicit:
        return _private_dir(explicit)
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return _private_dir(os.path.join(home, "pandapilot")) or _private_dir(
        os.path.join(tempfile.gettempdir(), f"pandapilot-{os.getuid()}"))


def _unpack_native(archive):
    """The directory holding the bundled psutil, unpacked on first use; None if there is none."""
    with zipfile.ZipFile(archive) as zf:
        members = [info for info in zf.infolist() if info.filename.startswith(NATIVE)]
        if not members:
            return None
        key = hashlib.sha256("".join(f"{m.filename}:{m.CRC};" for m in members).encode()).hexdigest()[:16]
        base = _cache_base()
        if base is None:
            return None
        target = os.path.join(base, f"native-{key}")
        if not os.path.isdir(target):
            staging = tempfile.mkdtemp(prefix=".unpacking-", dir=base)
            try:
                zf.extractall(staging, members=members)  # names are the builder's own: no '..', no absolute
                os.rename(os.path.join(staging, NATIVE.rstrip("/")), target)
            except OSError:
                if not os.path.isdir(target):  # another pilot on the node won the rename: use its copy
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


def _ensure_psutil(archive):
    try:
        import psutil  # noqa: F401  (the node's own)
        return
    except ImportError:
        pass
    native = _unpack_native(archive)
    if native:
        sys.path.insert(1, native)


def main():
    _ensure_psutil(os.path.dirname(os.path.abspath(__file__)))
    from pilot.cli import main as pilot_main

    sys.exit(pilot_main())


if __name__ == "__main__":
    main()
