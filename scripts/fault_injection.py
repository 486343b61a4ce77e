"""Fault injection: feed train.py every kind of bad input and check each is handled cleanly.

Clean means: a non-zero exit, one message that names the setting or file to change, no
results or checkpoints written by the failed run, and an earlier run's outputs untouched.

    python scripts/fault_injection.py [--data-dir ../shared/data] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["trainer.max_steps=4", "trainer.val_check_interval=2", "dataset.val_episodes=4",
         "dataset.test_episodes=4", "progress=log"]


def train(args: list[str], run_dir: Path, timeout: float = 600) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def tree_digest(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file() and not f.name.endswith(".log")}


def make_bad_data(tmp: Path, data_dir: Path) -> tuple[Path, Path]:
    """Two Omniglot directories: one with a corrupt zip, one with an unreadable PNG."""
    corrupt, badpng = tmp / "corrupt", tmp / "badpng"
    src = data_dir / "omniglot"
    for d in (corrupt, badpng):
        d.mkdir()
        (d / "images_evaluation.zip").symlink_to(src / "images_evaluation.zip")
        (d / "splits").symlink_to(src / "splits")
    (corrupt / "images_background.zip").write_bytes(b"PK\x03\x04 this is not really a zip" * 100)
    with zipfile.ZipFile(badpng / "images_background.zip", "w") as z:
        for i in range(1, 21):
            z.writestr(f"images_background/Alpha/character01/0001_{i:02d}.png", b"\x89PNG broken" if i == 7 else
                       _png_bytes())
    return corrupt, badpng


def _png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (105, 105), 1).save(buf, format="PNG")
    return buf.getvalue()


def cases(tmp: Path, data_dir: Path, ckpt: Path) -> list[tuple[str, list[str], str]]:
    """(name, overrides, regex the message must match)."""
    omni = ["dataset=omniglot", "model=conv4", f"paths.data_dir={data_dir}"]
    corrupt, badpng = make_bad_data(tmp, data_dir)
    garbage = tmp / "garbage.ckpt"
    garbage.write_bytes(b"\x00" * 1000)
    return [
        ("ways > classes", [*omni, "dataset.ways=5000"], r"dataset\.ways=5000.*only"),
        ("shots + queries > examples", [*omni, "dataset.shots=10", "dataset.queries=15"], r"only 20 drawers"),
        ("inner lr <= 0", ["algorithm.inner_lr=0"], r"algorithm\.inner_lr must be > 0"),
        ("outer lr <= 0", ["algorithm.optimizer.lr=-1"], r"(?i)invalid learning rate"),
        ("inner steps < 0", ["algorithm.inner_steps=-1"], r"inner_steps.*>= 0"),
        ("meta-batch <= 0", ["dataset.meta_batch_size=0"], r"dataset\.meta_batch_size must be > 0"),
        ("unknown algorithm", ["algorithm=mamll"], r"there is no algorithm mamll .*did you mean algorithm=maml\?"),
        ("unknown dataset", ["dataset=nope"], r"there is no dataset nope .*dataset is one of: "),
        ("data_dir missing", [*omni, f"paths.data_dir={tmp / 'nowhere'}"], r"does not exist.*dataset\.download=true"),
        ("corrupt zip", [*omni, f"dataset.data_dir={corrupt}"], r"images_background\.zip.*not a readable zip"),
        ("unreadable image", [*omni, f"dataset.data_dir={badpng}"], r"0001_07\.png cannot be read"),
        ("checkpoint of another architecture", ["--config-name", "eval", f"ckpt_path={ckpt}", "model.hidden=[8]"],
         r"does not fit .*model"),
        ("corrupt checkpoint", ["--config-name", "eval", f"ckpt_path={garbage}"], r"truncated or corrupt"),
        ("more devices than the machine has", ["trainer.devices=512"], r"trainer\.devices=512"),
        ("negative seed", ["seed=-1"], r"seed must be an integer in \[0, 2\*\*32\)"),
        ("negative checkpoint interval", ["checkpoint.every_n_train_steps=-1"], r"checkpoint\.every_n_train_steps must be"),
        ("eval without a checkpoint", ["--config-name", "eval"], r"needs the checkpoint to test: add ckpt_path="),
        ("resume with a changed optimizer", [f"ckpt_path={ckpt}", "algorithm.optimizer.lr=0.5"],
         r"resuming restores the optimizer"),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"), help="holds omniglot/")
    ap.add_argument("--only", nargs="*", help="run only cases whose name contains one of these words")
    args = ap.parse_args()
    data_dir = Path(args.data_dir).resolve()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        earlier = tmp / "earlier"
        rc, out = train(SMALL, earlier)
        if rc != 0:
            print(out[-3000:])
            raise SystemExit("the reference run failed; fix that first")
        before = tree_digest(earlier)
        todo = cases(tmp, data_dir, earlier / "checkpoints" / "last.ckpt")
        if args.only:
            todo = [c for c in todo if any(w in c[0] for w in args.only)]
        clean = 0
        for i, (name, overrides, pattern) in enumerate(todo):
            run = tmp / f"bad{i}"
            t0 = time.perf_counter()
            rc, out = train([*overrides, *SMALL[:1]], run)
            problems = []
            if rc == 0:
                problems.append("exit 0")
            if not re.search(pattern, out, re.S):
                problems.append(f"message lacks /{pattern}/")
            # A failed run records itself (results.json with status "failed", error.txt), nothing more.
            res = run / "results.json"
            if (res.exists() and json.loads(res.read_text()).get("status") != "failed") or any(
                    (run / "checkpoints").glob("*.ckpt")):
                problems.append("wrote results or checkpoints")
            ok = not problems
            clean += ok
            last = [ln for ln in out.strip().splitlines() if "Error" in ln or "error" in ln][-1:] or [""]
            print(f"{'ok  ' if ok else 'FAIL'} {name:<36} {time.perf_counter() - t0:5.1f}s  "
                  f"{'; '.join(problems) or last[0][:110]}")
        intact = tree_digest(earlier) == before
        print(f"\n{clean} of {len(todo)} bad inputs handled cleanly; earlier run's outputs "
              f"{'intact' if intact else 'CHANGED'}")
        return 0 if clean == len(todo) and intact else 1


if __name__ == "__main__":
    sys.exit(main())
