"""The fuzzer's table: hostile job definitions (tests/fuzz/definitions.py, fixed seed) through one pilot
run on the embedded dispatcher, each followed by a plain job. Prints the outcome x count table, then the
outcome of each mutation. The pass/fail proof is tests/fuzz/test_fuzz.py.

  python bench/fuzz.py [--seed 20261128] [--count 300]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import Site  # noqa: E402
from tests.fuzz.definitions import INPUT, definitions, outcome, write  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        site = Site(Path(tmp), {"kill_grace": 1})
        site.put_input("in.dat", INPUT)
        fuzzed = definitions(args.seed, args.count)
        for one in fuzzed:
            write(site.jobs, one)
            site.add_job(one.panda_id + 1, "true")
        begin = time.monotonic()
        result = site.run("--max-no-job", "3", timeout=1800)
        elapsed = time.monotonic() - begin
        outcomes = {one.panda_id: outcome(site.jobs, one.panda_id, site.history(one.panda_id)) for one in fuzzed}
        next_ran = sum(site.final(one.panda_id + 1)["job_status"] == "finished" for one in fuzzed)
    print(f"{len(fuzzed)} fuzzed definitions (seed {args.seed}), each followed by a plain job, in one pilot run "
          f"of {elapsed:.0f} s: pilot exit code {result.returncode}, "
          f"tracebacks {result.stderr.count('Traceback')}, next job ran after {next_ran}/{len(fuzzed)}")
    print(f"\n{'outcome':<28} {'count':>5}")
    for label, count in collections.Counter(o.label for o in outcomes.values()).most_common():
        print(f"{label:<28} {count:>5}")
    print(f"\n{'mutation':<26} outcomes")
    by_mutation: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for one in fuzzed:
        by_mutation[one.mutation][outcomes[one.panda_id].label] += 1
    for mutation in sorted(by_mutation):
        print(f"{mutation:<26} " + ", ".join(f"{label} x{n}" for label, n in by_mutation[mutation].most_common()))


if __name__ == "__main__":
    main()
