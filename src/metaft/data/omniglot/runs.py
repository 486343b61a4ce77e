"""Lake et al.'s one-shot classification benchmark on Omniglot: 20 runs of 20-way 1-shot.

A runs directory holds ``run01`` .. ``run20``, each with ``training/class01..20.png`` (one image per
class), ``test/item01..20.png`` (one query per class) and ``class_labels.txt`` (lines
``runNN/test/itemMM.png runNN/training/classKK.png``): 400 trials in all. It is the layout of
``all_runs.zip`` in brendenlake/omniglot (python/one-shot-classification), and of what
``python -m metaft.data.omniglot.runs build --data-dir OMNIGLOT --out DIR`` makes from
``images_evaluation.zip`` (within-alphabet runs, class and test images by two different drawers).

Lake's official runs, matched image by image against ``images_evaluation.zip``, use ten of the
twenty evaluation alphabets, two runs each, and only drawers 1-8 (one for the class images, another
for the test items of a run). ``build`` follows that by default (``--protocol lake``: new draws of
characters and drawers, so another benchmark of the same construction, not Lake's runs);
``--protocol all`` is the construction of metaft's earlier built runs (every evaluation alphabet
once, any of the 20 drawers), kept so that their published numbers stay reproducible. Which runs a
directory holds is recognised and reported (``describe``: results.json's ``runs``): Lake's official
ones by their fingerprint, built ones by the ``BUILT.json`` that ``build`` writes.

The images get the Omniglot preprocessing of ``metaft.data.omniglot.images.preprocess``. Lake's own
loader treats dark pixels as ink (``np.logical_not(imread(...))``), the polarity of the dataset
PNGs; since copies of the runs circulate in both polarities, the polarity is decided per image
from its majority (background) colour, so either gives the same tensors.

Evaluation only: ``python train.py --config-name eval ckpt_path=... dataset=omniglot_runs``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metaft.data.episodic import EpisodicDataModule
from metaft.data.episode import Episode
from metaft.data.omniglot.images import area_resize, ink_image
from metaft.data.omniglot.store import DRAWERS

RUNS, WAYS = 20, 20
# Lake's official runs (all_runs.zip), found by matching every image against images_evaluation.zip:
# runs 2k+1 and 2k+2 are of alphabet k, class and test images by two drawers among the first eight.
LAKE_ALPHABETS = ("Atlantean", "Ge_ez", "Glagolitic", "Gurmukhi", "Kannada", "Malayalam", "Manipuri",
                  "Old_Church_Slavonic_(Cyrillic)", "Tengwar", "Tibetan")
LAKE_DRAWERS = 8
PROTOCOLS = ("lake", "all")
# runs_fingerprint of Lake's official runs as distributed (either polarity).
LAKE_FINGERPRINT = "efa97df4dcc0b6ac"
OFFICIAL = "Lake's official one-shot runs (all_runs.zip of brendenlake/omniglot)"
BUILT_FILE = "BUILT.json"
_LABEL_LINE = re.compile(r"^(run\d\d)/test/item(\d\d)\.png\s+(run\d\d)/training/class(\d\d)\.png$")
_EVAL_ONLY = (
    "dataset=omniglot_runs is Lake's fixed one-shot benchmark and is evaluation only: meta-train on "
    "dataset=omniglot, then evaluate with `python train.py --config-name eval ckpt_path=CKPT dataset=omniglot_runs`"
)


def _load_png(path: Path) -> Tensor:
    try:
        with Image.open(path) as img:
            return ink_image(img, ink_is_dark=None)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read as a 105x105 Omniglot image ({e}); rebuild or re-download the runs") from e


def load_run(run_dir: Path, image_size: int, digest: "hashlib._Hash | None" = None) -> Episode:
    """One run as a one-task ``Episode``: 20 support images (labels 0..19 for class01..class20) and
    the 20 test items in file order, labelled by ``class_labels.txt``; ``digest`` is updated with
    the run's ink (105 px, whatever its polarity on disk) and answers."""
    labels_file = run_dir / "class_labels.txt"
    if not labels_file.is_file():
        raise FileNotFoundError(f"{labels_file} is missing; a runs directory has run01..run20, each with "
                                "class_labels.txt, training/ and test/")
    answers: dict[int, int] = {}
    for line in labels_file.read_text().strip().splitlines():
        m = _LABEL_LINE.match(line.strip())
        if not m or m.group(1) != run_dir.name or m.group(3) != run_dir.name:
            raise ValueError(f"{labels_file}: line {line!r} is not 'RUN/test/itemMM.png RUN/training/classKK.png'")
        answers[int(m.group(2))] = int(m.group(4)) - 1
    if sorted(answers) != list(range(1, WAYS + 1)) or sorted(answers.values()) != list(range(WAYS)):
        raise ValueError(f"{labels_file} must map item01..item{WAYS} one-to-one onto class01..class{WAYS}")
    files = [run_dir / "training" / f"class{k:02d}.png" for k in range(1, WAYS + 1)]
    files += [run_dir / "test" / f"item{m:02d}.png" for m in range(1, WAYS + 1)]
    ink = torch.stack([_load_png(f) for f in files])
    if digest is not None:
        digest.update(ink.ge(128).numpy().tobytes())
        digest.update(bytes(answers[m] for m in range(1, WAYS + 1)))
    x = area_resize(ink, image_size).float().div_(255)
    x = x.view(2, 1, WAYS, 1, image_size, image_size)
    return Episode(x[0], torch.arange(WAYS).unsqueeze(0), x[1], torch.tensor([[answers[m] for m in range(1, WAYS + 1)]]))


class OmniglotRunsDataModule(EpisodicDataModule):
    """The 20 runs as the validation and the test episodes (20 tasks, 400 queries).

    Args:
        data_dir: the runs directory (``run01`` .. ``run20``).
        image_size: side of the images, as in meta-training (area-averaged from 105).
        ways, shots: fixed by the benchmark (20, 1); present so model configs can read them.
        eval_batch_size, seed: as in ``EpisodicDataModule`` (the runs themselves are fixed).
    """

    inductive_only = True  # compared with people and a Siamese net, who score one image at a time
    has_val_split = False  # the 20 runs are the test; there is nothing to choose settings on

    task = "classification"
    class_identity = "omniglot_runs"  # the evaluation alphabets' characters (a run does not name its own)

    def __init__(self, data_dir: str, image_size: int = 28, ways: int = WAYS, shots: int = 1,
                 eval_batch_size: int = RUNS, seed: int = 0) -> None:
        super().__init__(meta_batch_size=1, val_episodes=RUNS, test_episodes=RUNS,
                         eval_batch_size=eval_batch_size, seed=seed)
        if ways != WAYS or shots != 1:
            raise ValueError(f"Lake's runs are {WAYS}-way 1-shot; dataset.ways={ways} dataset.shots={shots} cannot be "
                             f"changed for dataset=omniglot_runs (train a {WAYS}-way model, or evaluate on dataset=omniglot)")
        if image_size <= 0:
            raise ValueError(f"dataset.image_size must be > 0, got {image_size}")
        self.ways, self.shots, self.image_size = ways, shots, image_size
        self.data_dir = Path(data_dir).expanduser()
        missing = [f"run{r:02d}" for r in range(1, RUNS + 1) if not (self.data_dir / f"run{r:02d}").is_dir()]
        if missing:
            raise FileNotFoundError(
                f"dataset.data_dir={self.data_dir} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}. "
                "Point it at Lake's runs (all_runs.zip of brendenlake/omniglot, unzipped) or build a directory of the "
                "same form with `python -m metaft.data.omniglot.runs build --data-dir OMNIGLOT_DIR --out DIR`"
            )
        digest = hashlib.sha256()
        self.runs = Episode.cat([load_run(self.data_dir / f"run{r:02d}", image_size, digest) for r in range(1, RUNS + 1)])
        self.runs_fingerprint = digest.hexdigest()[:16]

    def describe(self) -> dict[str, str]:
        """Which runs these are, for results.json: Lake's official ones (by their fingerprint), runs
        made by ``build`` (its ``BUILT.json``), or others in the same layout."""
        if self.runs_fingerprint == LAKE_FINGERPRINT:
            name = OFFICIAL
        elif (self.data_dir / BUILT_FILE).is_file():
            built = json.loads((self.data_dir / BUILT_FILE).read_text())
            name = (f"runs built by metaft (protocol={built.get('protocol')}, seed={built.get('seed')}), not Lake's "
                    "official ones")
        else:
            name = "runs in Lake's layout that are not Lake's official ones (nor made by metaft's build)"
        return {"runs": name, "runs_fingerprint": self.runs_fingerprint}

    def fixed_episodes(self, split: str) -> list[Episode]:
        if split not in ("val", "test"):
            raise ValueError(_EVAL_ONLY)
        b = self.eval_batch_size
        return [self.runs[i : i + b] for i in range(0, RUNS, b)]

    def sample(self, split: str, n: int, generator: torch.Generator) -> Episode:
        raise ValueError(_EVAL_ONLY + " (the runs are fixed; there is nothing to sample)")

    def train_dataloader(self):
        raise ValueError(_EVAL_ONLY)


def build_runs(data_dir: str | Path, out: str | Path, seed: int = 0, protocol: str = "lake") -> Path:
    """Make a runs directory from ``images_evaluation.zip``: run r is 20 characters of one
    evaluation alphabet; its class images are by one drawer and its test items by another; the
    test items are in random order. ``protocol``: ``lake`` (Lake's alphabets, two runs each, and
    drawers 1-8) or ``all`` (every alphabet once in a random order, any drawer: the construction of
    the runs behind metaft's earlier numbers). The original 105x105 PNG bytes are copied.
    Deterministic by ``seed`` and ``protocol``, recorded in ``BUILT.json``. Written to a temporary
    directory and renamed, so ``out`` is complete or absent."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    zip_path = Path(data_dir).expanduser() / "images_evaluation.zip"
    out = Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f"--out {out} already exists; choose a new directory (it is never overwritten)")
    if not zip_path.is_file():
        raise FileNotFoundError(f"{zip_path} is missing; --data-dir must hold images_evaluation.zip")
    rng = random.Random(seed)
    with zipfile.ZipFile(zip_path) as z:
        chars: dict[str, dict[str, list[str]]] = {}
        for name in sorted(z.namelist()):
            parts = name.split("/")
            if len(parts) == 4 and parts[3].endswith(".png"):
                chars.setdefault(parts[1], {}).setdefault(parts[2], []).append(name)
        alphabets = sorted(a for a, c in chars.items() if len(c) >= WAYS)
        if not alphabets:
            raise ValueError(f"{zip_path} has no alphabet with {WAYS} characters")
        if protocol == "lake":
            missing = [a for a in LAKE_ALPHABETS if a not in alphabets]
            if missing:
                raise ValueError(f"{zip_path} lacks Lake's run alphabets {missing}; is it Omniglot's images_evaluation.zip?")
            order = [a for a in LAKE_ALPHABETS for _ in range(RUNS // len(LAKE_ALPHABETS))]
            drawers = LAKE_DRAWERS
        else:  # the draws of the first builder, unchanged: the same runs for the same seed
            order = rng.sample(alphabets, len(alphabets))
            drawers = DRAWERS
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        try:
            for r in range(1, RUNS + 1):
                alphabet = order[(r - 1) % len(order)]  # each alphabet once before any repeats
                picked = rng.sample(sorted(chars[alphabet]), WAYS)
                train_drawer, test_drawer = rng.sample(range(drawers), 2)  # member names sort by drawer
                items = rng.sample(range(WAYS), WAYS)  # item m shows class items[m]
                run = tmp / f"run{r:02d}"
                (run / "training").mkdir(parents=True)
                (run / "test").mkdir()
                lines = []
                for k, char in enumerate(picked):
                    (run / "training" / f"class{k + 1:02d}.png").write_bytes(z.read(chars[alphabet][char][train_drawer]))
                for m, k in enumerate(items):
                    (run / "test" / f"item{m + 1:02d}.png").write_bytes(z.read(chars[alphabet][picked[k]][test_drawer]))
                    lines.append(f"run{r:02d}/test/item{m + 1:02d}.png run{r:02d}/training/class{k + 1:02d}.png")
                (run / "class_labels.txt").write_text("\n".join(lines) + "\n")
            (tmp / BUILT_FILE).write_text(json.dumps({"protocol": protocol, "seed": seed,
                                                      "by": "python -m metaft.data.omniglot.runs build"}) + "\n")
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m metaft.data.omniglot.runs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="make a 20-run one-shot benchmark directory from images_evaluation.zip")
    b.add_argument("--data-dir", required=True, help="the Omniglot directory holding images_evaluation.zip")
    b.add_argument("--out", required=True, help="the runs directory to create (must not exist)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--protocol", choices=PROTOCOLS, default="lake",
                   help="lake: Lake's ten alphabets, two runs each, drawers 1-8 (default); all: every evaluation "
                        "alphabet, any drawer (the runs of metaft's earlier numbers)")
    args = parser.parse_args(argv)
    print(build_runs(args.data_dir, args.out, args.seed, args.protocol))


if __name__ == "__main__":
    main()
