"""Where full fine-tuning starts: the head each target problem's weights begin from.

The prototype head (``W_c = 2 mu_c``, ``b_c = -|mu_c|^2``) puts every 1-shot support example
exactly on its own prototype, so its support loss (``log(1 + sum exp(-|f - mu_c|^2))``, with
squared feature distances in the tens) and its gradient are ~0 and fine-tuning does not move.
The starts offered to the study instead leave the support loss away from 0 at every K:

- ``zero``: a zero head (Kao et al. 2022): support loss ``log N``; the first step moves the
  head only (the body's gradient goes through the head's weights, which are 0).
- ``tempered``: the prototype head divided by the support set's mean absolute margin (a temperature
  read off the data, as a cosine head's scale puts features on a common scale): the mean of
  ``(logit_own - logit_other) / T`` over support examples and other classes is at most 1, so by Jensen's
  inequality the mean support loss is at least ``log(1 + (N - 1) / e)`` (0.98 at N = 5) at any K,
  whatever the features' scale, and its gradient does not vanish.

- ``lpft``: linear probe, then fine-tuning (Kumar et al. 2022): the head is RFS's logistic
  regression (``C = 1``, exactly solved) on the support features divided by their mean norm, so
  the fit does not depend on the features' scale; its L2 penalty keeps the support loss away
  from 0 at small K (about 1.1 at 5-way 1-shot on near-orthogonal features), not a proven floor
  as the tempered start's: ``tests/study/test_starts.py`` checks it.

``prototypes`` (the old start) and ``keep`` (the network's own head: regression) remain
available; ``STARTS`` lists the ones whose support loss is away from 0.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor
from torch.func import functional_call

from metaft.algorithms.probes import logistic_regression, prototype_head
from metaft.models.nets import MetaNet

HeadInit = Literal["prototypes", "zero", "keep", "tempered", "lpft"]
HEAD_INITS = ("prototypes", "zero", "keep", "tempered", "lpft")
STARTS = ("zero", "tempered", "lpft")  # classification starts whose support loss is not ~0 at K = 1
LP_C = 1.0  # the linear probe's inverse L2 strength (RFS's, scikit-learn's default)


def tempered_floor(ways: int) -> float:
    """The lowest mean support loss the ``tempered`` start can have with ``ways`` classes."""
    return math.log(1 + (ways - 1) / math.e)


def check_head_init(head_init: str, setting: str = "head_init") -> None:
    if head_init not in HEAD_INITS:
        raise ValueError(f"{setting} must be one of {', '.join(HEAD_INITS)}, got {head_init!r}")


def start(net: MetaNet, sx: Tensor, sy: Tensor, ways: int, head_init: HeadInit,
          buffers: dict[str, Tensor]) -> dict[str, Tensor]:
    """One problem's starting weights (detached): the net's, with its head by ``head_init``.
    Prototypes take the support set's features in training mode, as ``init_head`` does (which
    also updates running statistics: here the problem's own copy in ``buffers``). No
    data-dependent control flow except ``lpft``'s solver, so the other starts run under ``vmap``."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    if head_init == "keep":
        return params
    if head_init == "zero":
        d = net.head.in_features
        return {**params, "head.weight": sx.new_zeros(ways, d), "head.bias": sx.new_zeros(ways)}
    fs = features(net, params, buffers, sx)
    if head_init == "lpft":
        w, b = lp_head(fs[None], sy[None], ways)
        return {**params, "head.weight": w[0], "head.bias": b[0]}
    w, b = prototype_head(fs[None], sy[None], ways, check=False)  # labels checked by episode_ways
    w, b = w[0], b[0]
    if head_init == "tempered":
        t = mean_margin(fs @ w.T + b, sy, ways)
        w, b = w / t, b / t
    return {**params, "head.weight": w, "head.bias": b}


def features(net: MetaNet, params: dict[str, Tensor], buffers: dict[str, Tensor], sx: Tensor) -> Tensor:
    """The body's features of one support set, ``[S, D]``, with its batch statistics (training
    mode, as ``class_prototypes``)."""
    body = {k[len("body."):]: v for k, v in {**params, **buffers}.items() if k.startswith("body.")}
    return functional_call(net.body, body, (sx,)).flatten(1)


def lp_head(fs: Tensor, sy: Tensor, ways: int) -> tuple[Tensor, Tensor]:
    """The ``lpft`` start's head for every problem, ``(W [P, ways, D], b [P, ways])`` on the raw
    features ``fs [P, S, D]``: logistic regression on ``fs / r`` (``r``: the problem's mean
    feature norm), solved in float64, then ``W / r``. Batched over problems; not under ``vmap``
    (the solver stops on convergence)."""
    r = fs.norm(dim=-1).mean(-1).clamp_min(torch.finfo(fs.dtype).tiny)[:, None, None]  # [P, 1, 1]
    w, b = logistic_regression((fs / r).double(), sy, ways, C=LP_C, normalize=False)
    return (w / r.double()).to(fs.dtype), b.to(fs.dtype)


def mean_margin(logits: Tensor, y: Tensor, ways: int) -> Tensor:
    """The temperature: ``mean |logit_own - logit_c|`` over examples and their other classes
    ``c``. It is at least ``|mean margin|``, so the scaled margins average at most 1 and the
    floor holds even when some margins are negative; kept above the dtype's smallest normal
    number (all margins 0: every logit equal, the loss ``log N`` whatever the scale)."""
    own = torch.nn.functional.one_hot(y, ways).to(logits.dtype)
    margins = (logits * own).sum(-1, keepdim=True) - logits  # 0 in the own column
    mean = margins.abs().sum() / (own.shape[0] * (ways - 1))
    return mean.clamp_min(torch.finfo(logits.dtype).tiny)
