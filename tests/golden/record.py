"""Record (or check) the golden numbers: run every case of ``tests/golden/cases.py`` in this process
and write their summaries to ``tests/golden/golden.json``.

    OMP_NUM_THREADS=1 .venv/bin/python -m tests.golden.record            # re-record (from the repo root)
    OMP_NUM_THREADS=1 .venv/bin/python -m tests.golden.record --check    # compare, write nothing; exit 1 on a difference
    .venv/bin/python -m pytest tests/golden                               # the regression test

Re-record only for a change that is meant to move the numbers, and name it (and why) in the commit
message; the diff of golden.json shows which runs and values moved. Needs the Omniglot data under
``paths.data_dir`` (the Omniglot cases), as the test does.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Before torch is imported: one thread, as the tests run (see cases.Runner).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.golden.cases import CASES, GOLDEN, Runner, differences, environment  # noqa: E402


def record(names: list[str]) -> dict[str, dict]:
    """The summaries of the named cases (all, in order, when empty), run in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="metaft_golden_") as tmp:
        runner = Runner(Path(tmp))
        out = {}
        for case in CASES:
            if names and case.name not in names:
                continue
            start = time.perf_counter()
            out[case.name] = runner(case.name)
            print(f"{case.name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the stored numbers instead of writing them")
    parser.add_argument("--out", type=Path, default=GOLDEN, help="where to write (default: %(default)s)")
    parser.add_argument("cases", nargs="*", help="only these cases (e.g. sinusoid/maml); with --out or --check only")
    args = parser.parse_args(argv)
    if args.cases and not args.check and args.out == GOLDEN:
        parser.error("recording a subset would drop the other cases from golden.json: pass --out FILE or --check")
    unknown = [n for n in args.cases if n not in {c.name for c in CASES}]
    if unknown:
        parser.error(f"unknown cases {unknown}; the cases: {', '.join(c.name for c in CASES)}")
    got = record(args.cases)
    if args.check:
        doc = json.loads(GOLDEN.read_text())
        if doc["environment"] != environment():
            print(f"warning: recorded in {doc['environment']}, checked in {environment()}: numbers may differ "
                  "in the last bits, amplified by training", file=sys.stderr)
        stored = doc["cases"]
        diffs = [f"{name}{d}" for name in got for d in differences(stored[name], got[name])]
        print("\n".join(diffs) or f"all {len(got)} cases as stored")
        return 1 if diffs else 0
    doc = {
        "about": "Golden numbers of tests/golden/cases.py, written by `python -m tests.golden.record`; "
                 "compared by tests/golden/test_golden.py. Do not edit by hand.",
        "environment": environment(),
        "cases": got,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(got)} cases to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
