"""Class identity by image source, and the one check that a checkpoint is never scored on classes
it has seen.

A class is named so that every benchmark cut from the same images names it the same way: ImageNet
wnids for mini- and tiered-ImageNet, CIFAR-100 fine names for CIFAR-FS and FC100 (FC100's
superclasses expanded), CUB's folder names, ``ALPHABET/characterNN`` for Omniglot (a rotated copy
of a character is the same character), and a class folder's path relative to the root for an image
folder. A class of another image source is another class even when its name matches
(mini-ImageNet's lion is not CIFAR's lion): scoring across sources is cross-domain, allowed, and
noted in results.json.

Everything here is resolved from configs and the class lists alone, so the check runs before any
image is read.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from hydra.utils import get_class

from metaft.checkpoint import CLASSES_KEY, config as stored_config, stored_classes
from metaft.data.images.source import SPLIT_DIR, SPLITS, ClassLists, class_list

VERSION = 1  # of the stored form (``Classes.stored``)
# The benchmark -> the images it is cut from.
IMAGE_SOURCES = {"mini_imagenet": "imagenet", "tiered_imagenet": "imagenet", "cifar_fs": "cifar100",
                 "fc100": "cifar100", "cub": "cub_200_2011", "image_folder": "image_folder"}
OMNIGLOT = "omniglot"
_ALPHABETS = Path(__file__).parent / "omniglot" / "alphabets.txt"
_SHOWN = 5  # classes named in a message


@dataclass(frozen=True)
class Classes:
    """The classes of a dataset config: ``splits[train|val|test]`` (the splits that are defined)
    as identifiers of ``source``'s images; ``dataset`` names the benchmark in messages."""

    source: str
    dataset: str
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def stored(self) -> dict[str, Any]:
        """The form kept in a checkpoint: the classes it was trained and validated on."""
        return {"version": VERSION, "source": self.source, "dataset": self.dataset,
                **{s: list(self.splits.get(s, ())) for s in ("train", "val")}}


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names)[:_SHOWN])
    return shown + (", ..." if len(names) > _SHOWN else "")


def check_disjoint(splits: Mapping[str, Sequence[str]], dataset: str, setting: str) -> None:
    """Refuse split lists that share classes (``setting`` names where they come from)."""
    names = [s for s in SPLITS if splits.get(s)]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = set(splits[a]) & set(splits[b])
            if shared:
                raise ValueError(f"{dataset}: the {a} and {b} class lists share {len(shared)} classes "
                                 f"({_listed(list(shared))}); a class may be in one split only: fix {setting}")


# ------------------------------------------------------------------------------- natural images
@cache
def cifar_superclasses() -> dict[str, tuple[str, ...]]:
    """CIFAR-100's 20 superclasses -> their five fine classes (the dataset's own grouping)."""
    lines = (SPLIT_DIR / "fc100" / "superclasses.txt").read_text().splitlines()
    return {parts[0]: tuple(parts[1:]) for parts in (line.split() for line in lines) if parts}


def _image_id(name: str, benchmark: str, cls: str, split: str) -> list[str]:
    if benchmark == "fc100":
        groups = cifar_superclasses()
        if cls not in groups:
            raise ValueError(f"dataset.class_lists.{split} of fc100 names {cls!r}, which is not a CIFAR-100 "
                             f"superclass (FC100 splits by superclass: {_listed(list(groups))})")
        return list(groups[cls])
    if benchmark == "image_folder":  # a folder's path relative to the root, however it was written
        path = PurePosixPath(os.path.normpath(cls.replace(os.sep, "/")))
        if path.is_absolute() or path.parts[:1] == ("..",):
            raise ValueError(f"dataset.class_lists.{split} names {cls!r}: class folders are paths inside "
                             "dataset.data_dir (relative, without ..)")
        return [path.as_posix()]
    return [cls]


def image_classes(name: str, class_lists: ClassLists | None = None,
                  splits: Iterable[str] = SPLITS) -> Classes:
    """The classes of benchmark ``name`` (standard lists, or ``class_lists`` overrides), checked
    disjoint. An image folder's split without a list is left out (it is refused only when used)."""
    if name not in IMAGE_SOURCES:
        raise ValueError(f"dataset.name must be one of {', '.join(IMAGE_SOURCES)}, got {name!r}")
    resolved: dict[str, tuple[str, ...]] = {}
    for split in splits:
        if name == "image_folder" and not (class_lists and class_lists.get(split) is not None):
            continue
        ids = [i for c in class_list(name, split, class_lists) for i in _image_id(name, name, c, split)]
        resolved[split] = tuple(ids)
    given = [f"dataset.class_lists.{s}" for s in SPLITS if class_lists and class_lists.get(s) is not None]
    check_disjoint(resolved, name, " / ".join(given) if given else f"the packaged lists splits/{name}/")
    return Classes(IMAGE_SOURCES[name], name, resolved)


# ------------------------------------------------------------------------------------- Omniglot
def omniglot_characters(data_dir: str | Path | None = None) -> dict[str, tuple[str, ...]]:
    """``images_background`` / ``images_evaluation`` -> their ``ALPHABET/characterNN``, sorted:
    the zips' member names when ``data_dir`` holds both (their directories only, no image is
    read), else the alphabets of the distributed zips as packaged (``omniglot/alphabets.txt``)."""
    zips = [Path(str(data_dir)).expanduser() / f"{name}.zip" for name in _OMNIGLOT_SETS] if data_dir else []
    if zips and all(z.is_file() for z in zips):
        return {name: _zip_characters(z) for name, z in zip(_OMNIGLOT_SETS, zips)}
    return _packaged_characters()


_OMNIGLOT_SETS = ("images_background", "images_evaluation")


@cache
def _zip_characters(path: Path) -> tuple[str, ...]:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: not a readable zip file ({e}); replace it with a good copy") from e
    return tuple(sorted({"/".join(n.split("/")[1:3]) for n in names if n.count("/") == 3 and n.endswith(".png")}))


@cache
def _packaged_characters() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for line in _ALPHABETS.read_text().splitlines():
        if line and not line.startswith("#"):
            zip_name, alphabet, count = line.split()
            out.setdefault(zip_name, []).extend(f"{alphabet}/character{k:02d}" for k in range(1, int(count) + 1))
    return {k: tuple(sorted(v)) for k, v in out.items()}


def _unrotated(path: Path) -> tuple[str, ...]:
    """A Vinyals list's characters (``ALPHABET/characterNN/rotDDD`` without the turn), in order."""
    chars = dict.fromkeys(line.rsplit("/", 1)[0] for line in path.read_text().split())
    return tuple(chars)


def omniglot_classes(split: str = "vinyals", data_dir: str | Path | None = None,
                     lake_val_alphabets: int = 5) -> Classes:
    """The characters of Omniglot's ``split`` scheme: the Vinyals lists (read from
    ``data_dir/splits/vinyals``), or Lake's alphabets (background alphabets for training, the last
    ``lake_val_alphabets`` of them by name for validation, the evaluation alphabets for test)."""
    split = split or "vinyals"
    if split == "vinyals":
        from metaft.data.omniglot.splits import vinyals_split_files

        if data_dir is None:
            raise ValueError("dataset.data_dir is needed to read the Vinyals class lists")
        files = vinyals_split_files(Path(str(data_dir)).expanduser())
        resolved = {s: _unrotated(p) for s, p in files.items()}
        check_disjoint(resolved, "omniglot split=vinyals", ", ".join(str(p) for p in files.values()))
    elif split == "lake":
        chars = omniglot_characters(data_dir)
        background = chars["images_background"]
        alphabets = sorted({c.split("/")[0] for c in background})
        held = set(alphabets[len(alphabets) - int(lake_val_alphabets):]) if int(lake_val_alphabets) > 0 else set()
        resolved = {"train": tuple(c for c in background if c.split("/")[0] not in held),
                    "val": tuple(c for c in background if c.split("/")[0] in held),
                    "test": chars["images_evaluation"]}
    else:
        raise ValueError(f"dataset.split must be 'vinyals' or 'lake', got {split!r}")
    return Classes(OMNIGLOT, f"omniglot split={split}", resolved)


def lake_runs_classes() -> Classes:
    """Lake's one-shot runs (official or built): characters of the evaluation alphabets. Which 400
    of them a run directory shows is not named in its files, so all of them count as scored."""
    return Classes(OMNIGLOT, "omniglot_runs (Lake's runs)", {"test": omniglot_characters()["images_evaluation"]})


# ------------------------------------------------------------------------------------ from configs
# How a data module's or target's classes are identified: each declares one of these as its
# ``class_identity`` class attribute (None, the bases' default: it does not say, so a checkpoint
# trained on it without stored classes cannot be checked).
NO_CLASSES = "no_classes"        # data without classes (regression)
BENCHMARK = "benchmark"          # the class lists of benchmark ``name`` (``class_lists`` overrides)
OMNIGLOT_SPLIT = "omniglot"      # the characters of Omniglot's ``split`` scheme
OMNIGLOT_RUNS = "omniglot_runs"  # Lake's one-shot runs
FOLDERS = "folders"              # the class folders under ``root``
IDENTITIES = (NO_CLASSES, BENCHMARK, OMNIGLOT_SPLIT, OMNIGLOT_RUNS, FOLDERS)


def configured_class(cfg: Mapping[str, Any] | None) -> type | None:
    """The class a config's ``_target_`` names; None when it names none or one this metaft does
    not have (a stored config of another version)."""
    target = str((cfg or {}).get("_target_") or "")
    if not target:
        return None
    try:
        return get_class(target)
    except Exception:  # hydra wraps the ImportError / AttributeError of a missing class
        return None


def class_identity(cfg: Mapping[str, Any] | None) -> str | None:
    """How the classes of the data a config builds are identified: what its class declares
    (``IDENTITIES``); ``NO_CLASSES`` for a config that builds nothing; None when undeclared."""
    if not (cfg or {}).get("_target_"):
        return NO_CLASSES
    identity = getattr(configured_class(cfg), "class_identity", None)
    if identity is not None and identity not in IDENTITIES:
        raise ValueError(f"{cfg['_target_']} declares class_identity={identity!r}; it must be one of "
                         f"{', '.join(IDENTITIES)} or None")
    return identity


def _omniglot(cfg: Mapping[str, Any]) -> Classes:
    return omniglot_classes(cfg.get("split") or "vinyals", cfg.get("data_dir"), int(cfg.get("lake_val_alphabets", 5)))


def dataset_classes(cfg: Mapping[str, Any] | None) -> Classes | None:
    """The classes of a stage-1 dataset config; None for data without classes (regression) or a
    datamodule without class identities."""
    identity = class_identity(cfg)
    if identity == BENCHMARK:
        return image_classes(str(cfg["name"]), cfg.get("class_lists"))
    if identity == OMNIGLOT_SPLIT:
        return _omniglot(cfg)
    if identity == OMNIGLOT_RUNS:
        return lake_runs_classes()
    return None


def target_classes(cfg: Mapping[str, Any] | None) -> Classes | None:
    """The classes a fine-tuning target config draws its problem from, under ``test`` (the split
    it scores); None for a target without classes (regression)."""
    identity = class_identity(cfg)
    if identity == BENCHMARK:
        split = str(cfg.get("split", "test"))
        c = image_classes(str(cfg["name"]), cfg.get("class_lists"), splits=(split,))
        return Classes(c.source, f"{c.dataset} {split} classes", {"test": c.splits[split]})
    if identity == OMNIGLOT_SPLIT:
        c = _omniglot(cfg)
        test = c.splits["test"]
        if cfg.get("classes") == "alphabet" and cfg.get("alphabet"):
            test = tuple(t for t in test if t.split("/")[0] == cfg["alphabet"]) or test
        return Classes(OMNIGLOT, c.dataset + " test classes", {"test": test})
    if identity == FOLDERS:
        root = Path(str(cfg["root"])).expanduser()
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
        return Classes(IMAGE_SOURCES["image_folder"], f"target.root={root}", {"test": tuple(names)})
    return None


# ---------------------------------------------------------------------------------- the check
def check_unseen(checkpoint: Mapping[str, Any], scored: Classes | None, split: str, what: str, ckpt_name: str,
                 allow: bool = False, fix: str = "") -> dict[str, Any]:
    """Refuse to score ``checkpoint`` on ``scored``'s ``split`` classes when they include classes
    it was trained on (or validated on, unless ``split`` is ``val``). Returns what results.json
    records: ``allow_seen_classes`` and ``class_check`` (what was found).

    ``what`` names the data in messages (``dataset=cub``), ``fix`` the setting that would avoid a
    refusal; ``allow`` (``allow_seen_classes=true``) scores them anyway and says how many were seen.
    """
    out: dict[str, Any] = {"allow_seen_classes": bool(allow)}
    classes = tuple(scored.splits.get(split, ())) if scored is not None else ()
    if not classes:
        out["class_check"] = "nothing to check: the scored data has no class identities"
        return out
    override = "set allow_seen_classes=true to score them anyway (recorded in results.json)"
    trained = stored_classes(checkpoint)
    if trained is None:
        stored_cfg = stored_config(checkpoint).get("dataset")
        if class_identity(stored_cfg) == NO_CLASSES:
            out["class_check"] = "the checkpoint was trained on data without classes"
            return out
        if allow:
            out["class_check"] = "not checked: the checkpoint does not store its classes (allow_seen_classes=true)"
            return out
        raise ValueError(
            f"{ckpt_name} does not store the classes it was trained on (it predates metaft's class identities, "
            f"key {CLASSES_KEY!r}), so whether {what} scores classes it has seen is unknown. Re-train it with this "
            f"version, or, if you know its training classes are disjoint from these, {override}")
    if trained.get("source") != scored.source:
        out["class_check"] = (f"cross-domain: trained on {trained.get('dataset')} ({trained.get('source')} images), "
                              f"scored on {scored.dataset} ({scored.source} images); classes of different image "
                              "sources are different classes even where their names match")
        return out
    seen_as = ("train",) if split == "val" else ("train", "val")
    seen = {s: sorted(set(classes) & set(trained.get(s) or ())) for s in seen_as}
    n = len(set().union(*seen.values()))
    if n == 0:
        out["class_check"] = f"passed: none of the {len(classes)} scored classes was seen"
        return out
    parts = "; ".join(f"{len(v)} in its {s} classes ({_listed(v)})" for s, v in seen.items() if v)
    message = (f"{what} scores {n} of its {len(classes)} {split} classes that the checkpoint {ckpt_name} "
               f"has seen: {parts} (trained on {trained.get('dataset')})")
    if allow:
        out["class_check"] = f"seen classes scored (allow_seen_classes=true): {message}"
        return out
    raise ValueError(f"{message}. {fix + ', or ' if fix else ''}{override}")
