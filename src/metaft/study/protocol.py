"""What a study must fix before anything runs: the problems it is scored on (the test split, never
the validation problems that choose its settings) and its primary comparison (one meta-learned
init against one pre-trained init, the adaptations and the K's of Holm's family), read from the
protocol, never picked on the test problems."""
from __future__ import annotations

from typing import NamedTuple

from omegaconf import DictConfig

from metaft.study.evaluate import ADAPTATIONS


class Primary(NamedTuple):
    """The confirmatory comparison: ``meta`` against ``pretrained`` on each (N, adaptation, K) of
    ``family`` (Holm's family); everything else the report shows is exploratory."""

    meta: str
    pretrained: str
    family: tuple[tuple[str, str, str], ...]  # (ways, adaptation, shots); regression's ways: ""


def check_split(cfg: DictConfig) -> None:
    """The study is scored on ``target.split=test``: its validation problems choose full
    fine-tuning's step size and count (and any other setting chosen on validation), so scoring on
    them would report numbers selected on the same problems."""
    split = str(cfg.target.get("split", "test"))
    if split == "val":
        raise ValueError("target.split=val is refused: the study's validation problems (adapt.finetune.val_problems, "
                         "drawn from the val split) choose full fine-tuning's step size and count, so scores on them "
                         "would be chosen on the problems they report; use target.split=test (choose settings on "
                         "validation with the stage-1 runs or eval_split=val, not with the study)")
    if split != "test":
        raise ValueError(f"target.split={split} is refused: the study scores the held-out test split "
                         "(target.split=test); the train split's classes are the ones the inits were trained on")


def primary(cfg: DictConfig) -> Primary | None:
    """The protocol's primary comparison, checked against its inits, adaptations and K's (an
    error names the setting); None when the protocol names none (then everything is exploratory)."""
    p = cfg.get("primary")
    if p is None:
        return None
    inits, pretrained = dict(cfg.inits), [str(i) for i in cfg.pretrained]
    meta, ref = str(p.get("meta")), str(p.get("pretrained"))
    if meta not in inits or inits[meta] is None or meta in pretrained:
        have = [i for i, a in inits.items() if a is not None and i not in pretrained]
        raise ValueError(f"primary.meta={meta} must be a meta-learned init of this study (one of {', '.join(have)}): "
                         "name it in the protocol before anything runs")
    if ref not in inits or ref not in pretrained:
        have = [i for i in pretrained if i in inits]
        raise ValueError(f"primary.pretrained={ref} must be an init of this study listed in `pretrained` (one of "
                         f"{', '.join(have) or 'none: add one to inits and pretrained'})")
    adaptations = [str(a) for a in p.get("adaptations") or []]
    wrong = [a for a in adaptations if a not in ADAPTATIONS]
    if not adaptations or wrong:
        raise ValueError(f"primary.adaptations={adaptations}: give one or more of {', '.join(ADAPTATIONS)}")
    if "inner" in adaptations and not cfg.adapt.inner:
        raise ValueError("primary.adaptations has inner but adapt.inner=false: the learners' own adaptation does not "
                         "run; drop it from primary.adaptations or set adapt.inner=true")
    target_shots = [str(k) for k in cfg.target.shots]
    shots = target_shots if p.get("shots") is None else [str(k) for k in p.shots]
    if not shots or any(k not in target_shots for k in shots):
        raise ValueError(f"primary.shots={shots}: give K's of target.shots ({', '.join(target_shots)}), or null for all")
    only = cfg.adapt.finetune.get("shots")
    finetuned = shots if only is None else [k for k in shots if k in {str(x) for x in only}]
    if "finetune" in adaptations and not finetuned:
        raise ValueError(f"primary.adaptations has finetune but full fine-tuning runs at K={list(only)} only "
                         f"(adapt.finetune.shots), none of primary.shots={shots}")
    listed = cfg.adapt.finetune.get("inits")
    if "finetune" in adaptations and listed is not None and not {meta, ref} <= {str(i) for i in listed}:
        raise ValueError(f"primary.adaptations has finetune but adapt.finetune.inits={list(listed)} leaves out "
                         f"{', '.join(i for i in (meta, ref) if i not in {str(x) for x in listed})}: list both "
                         "inits of the primary comparison there")
    family = tuple(("" if w is None else str(w), a, k)  # ways as the rows spell them (regression: "")
                   for w in cfg.target.ways for a in adaptations for k in (finetuned if a == "finetune" else shots))
    return Primary(meta, ref, family)


def check(cfg: DictConfig) -> Primary | None:
    """Every check of this module, before anything runs."""
    check_split(cfg)
    return primary(cfg)
