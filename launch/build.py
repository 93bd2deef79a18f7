"""Build the pilot's one-file bundle: `python -m launch.build [--output FILE] [--name NAME]`.

The bundle is a zipapp (the standard library's `zipapp`) that the node's python3 (>= 3.9) runs as
`python3 pandapilot.pyz run ...`. It holds the pilot (`pilot/`, `sitemovers/` and the distribution's
metadata, so the mover entry points resolve inside the archive), its pure-Python dependencies resolved
for CPython 3.9 (requests, urllib3, idna, certifi, charset_normalizer, PyYAML), each without its optional
compiled speed-ups, and psutil from its manylinux x86_64 abi3 wheel under `_native/` (used only when the
node has no psutil of its own: see launch/bootstrap.py). `--version` inside the bundle names the build.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipapp
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pilot import __version__

log = logging.getLogger("launch.build")

ROOT = Path(__file__).resolve().parent.parent
NATIVE_DISTRIBUTIONS = ("psutil",)  # unpacked from the archive at run time
TARGET = ["--only-binary", ":all:", "--python-version", "3.9", "--implementation", "cp",
          "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "any"]


@dataclass
class Bundle:
    path: Path
    size: int
    distributions: list[str]


def _pip(*args: str) -> None:
    argv = [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        detail = "\n".join(line for line in result.stderr.splitlines() if "is ignored" not in line)
        raise RuntimeError(f"{' '.join(argv[2:4])} failed:\n{detail[-2000:]}")


def _unpack(wheel: Path, stage: Path) -> str:
    """Unpack one wheel into the stage; compiled modules are dropped except for the native ones."""
    distribution = wheel.name.split("-")[0].lower()
    native = distribution in NATIVE_DISTRIBUTIONS
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            if name.endswith("/") or name.startswith(("/", "..")) or "/../" in name:
                continue
            if name.endswith(".so") and not native:
                continue  # an optional accelerator: the pure-Python module beside it is used
            target = stage / "_native" / name if native else stage / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return wheel.name


def _source_id(source: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(source), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def build(output: Path, name: Optional[str] = None, source: Path = ROOT) -> Bundle:
    """Build the bundle of the pilot's source tree `source` (this checkout by default) into `output`."""
    name = name or output.stem
    with tempfile.TemporaryDirectory(prefix="pandapilot-bundle-") as tmp:
        wheels, stage = Path(tmp) / "wheels", Path(tmp) / "stage"
        stage.mkdir()
        log.info("building the pilot's wheel from %s", source)
        leftover = not (source / "build").exists()
        try:
            _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(source))
        finally:
            if leftover:  # setuptools' build directory in the source tree: ours, not the developer's
                shutil.rmtree(source / "build", ignore_errors=True)
        own = next(wheels.glob("pandapilot-*.whl"))
        log.info("resolving the dependencies for CPython 3.9+ on manylinux x86_64")
        _pip("download", *TARGET, "--dest", str(wheels), str(own))
        distributions = [_unpack(wheel, stage) for wheel in sorted(wheels.glob("*.whl"))]
        shutil.copy(source / "launch" / "bootstrap.py", stage / "__main__.py")
        version = own.name.split("-")[1]  # the source's own version (pandapilot-<version>-py3-none-any.whl)
        info = {"name": name, "version": version, "source": _source_id(source),
                "built": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "distributions": distributions}
        (stage / "_pandapilot_bundle.py").write_text(f"BUNDLE = {json.dumps(info, indent=1)}\n")
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(f".{output.name}.partial")
        zipapp.create_archive(stage, partial, interpreter="/usr/bin/env python3", compressed=True)
        partial.replace(output)
    return Bundle(output, output.stat().st_size, distributions)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.build", description=__doc__.splitlines()[0])
    parser.add_argument("--output", "-o", type=Path, default=ROOT / "dist" / f"pandapilot-{__version__}.pyz")
    parser.add_argument("--name", help="the bundle's name in --version (default: the file's stem)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        bundle = build(args.output.absolute(), args.name)
    except (RuntimeError, OSError, StopIteration) as exc:
        log.error("bundle not built: %s", exc)
        return 1
    print(f"{bundle.path} ({bundle.size / 1e6:.2f} MB): {', '.join(bundle.distributions)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
