"""Copying a stage-1 checkpoint's body into a network, with an error naming what does not fit
(fine-tuning's start, and a learner's warm start from another run's body)."""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from metaft.models.nets import MetaNet


def shape_table(want: Mapping[str, Tensor], have: Mapping[str, Tensor], prefix: str) -> list[str]:
    """One line per entry whose shape differs (or that one side lacks)."""
    lines = []
    for k in sorted(set(want) | set(have)):
        a = tuple(want[k].shape) if k in want else "missing"
        b = tuple(have[k].shape) if k in have else "missing"
        if a != b:
            lines.append(f"  {prefix}{k}: model {a} vs checkpoint {b}")
    return lines


FINETUNE_MODEL_FIX = ("Use the checkpoint's model config: leave `model` unset (it is then read from the checkpoint) "
                      "or give model=<group> with the same settings.")


def load_body(net: MetaNet, state_dict: Mapping[str, Tensor], ckpt_name: str, ckpt_model: Any, model: Any,
              user: str = "fine-tuning model", fix: str = FINETUNE_MODEL_FIX) -> None:
    """Copy the checkpoint's ``net.body.*`` into ``net.body``; raise, naming the shapes that
    differ, both models (``user`` names this side) and ``fix``, when the architectures do not match."""
    body = {k[len("net.body."):]: v for k, v in state_dict.items() if k.startswith("net.body.")}
    if not body:
        raise ValueError(f"{ckpt_name} has no 'net.body.*' weights: it is not a checkpoint of a MetaNet "
                         "learner (meta-training or the pretrain algorithm)")
    mine = net.body.state_dict()
    diff = shape_table(mine, body, "body.")
    if diff:
        raise ValueError(
            f"{ckpt_name} is a checkpoint of another architecture: its body does not fit the {user}.\n"
            f"Shapes that differ:\n" + "\n".join(diff) + "\n"
            f"{user}: {model}\ncheckpoint's model: {ckpt_model}\n{fix}"
        )
    net.body.load_state_dict(body)
