"""Heads fitted on frozen body features, for many target problems at once (the study's linear
probes; pre-training's ``eval_head=logistic``). Every function takes features with a leading problem dimension,
``fs [P, S, D]`` support, labels ``sy [P, S]`` in ``[0, ways)``, and works in the features' dtype
(float64 for references).

* ``prototype_head``: nearest class mean as a linear layer (the rule of ``head_init=prototypes``).
* ``logistic_regression``: RFS's probe (Tian et al. 2020): multinomial logistic regression with an
  L2 penalty on L2-normalised features, solved exactly by Newton's method.
* ``fit_cosine_head``: Baseline++'s classifier (Chen et al. 2019), ``scale * cos(feature, w_c)``
  (``metaft.models.heads``: ``cosine_logits``, ``CosineClassifier``), fitted per problem.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metaft.algorithms.feature_head import one_hot
from metaft.core.inner_loop import adapt
from metaft.models.heads import cosine_logits  # with the models: pre-training (Baseline++) uses it too


def _check(fs: Tensor, sy: Tensor, ways: int) -> None:
    if fs.dim() != 3 or sy.shape != fs.shape[:2]:
        raise ValueError(f"support features must be [problems, S, D] with labels [problems, S]; got {tuple(fs.shape)} "
                         f"and {tuple(sy.shape)} (add a leading problem dimension of 1 for one problem)")
    if sy.is_floating_point() or int(sy.min()) < 0 or int(sy.max()) >= ways:
        raise ValueError(f"labels must be integers in [0, ways={ways}); got range [{sy.min()}, {sy.max()}]")
    if not one_hot(sy, ways, torch.bool).any(1).all():
        raise ValueError("every class needs a support example in every problem (a class without one has no head)")


def linear_logits(f: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``f [P, Q, D] @ weight[P, ways, D]^T + bias [P, ways]``."""
    out = f @ weight.transpose(-1, -2)
    return out if bias is None else out + bias.unsqueeze(-2)


def prototype_head(fs: Tensor, sy: Tensor, ways: int, check: bool = True) -> tuple[Tensor, Tensor]:
    """``(W [P, ways, D], b [P, ways])`` with ``W_c = 2 mu_c``, ``b_c = -|mu_c|^2``: logits equal
    to minus the squared distance to class mean ``mu_c`` up to a per-query constant, so argmax and
    softmax are nearest-prototype's. The rule of ``finetune.module.init_head`` (whose
    ``class_prototypes`` runs a module on one problem's images; here features of many problems).
    ``check=False`` skips the label checks, which vmap cannot run (check the labels before)."""
    if check:
        _check(fs, sy, ways)
    y = one_hot(sy, ways, fs.dtype)  # [P, S, ways]
    mu = y.transpose(1, 2) @ fs / y.sum(1).unsqueeze(-1)
    return 2 * mu, -(mu * mu).sum(-1)


def _lr_loss(logits: Tensor, y: Tensor, w: Tensor, penalty: float) -> Tensor:
    """Per problem: mean cross-entropy + ``penalty / 2 * |W|^2``. ``y``: one-hot ``[P, S, ways]``."""
    ce = -(y * torch.log_softmax(logits, -1)).sum(-1).mean(-1)
    return ce + 0.5 * penalty * w.pow(2).sum((-1, -2))


def logistic_regression(fs: Tensor, sy: Tensor, ways: int, C: float = 1.0, fit_intercept: bool = True,
                        normalize: bool = True, tol: float | None = None, max_iter: int = 100,
                        cg_iter: int = 200) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression per problem: ``(W [P, ways, D], b [P, ways])`` minimising
    ``C * sum_i CE(W x_i + b, y_i) + |W|^2 / 2`` (scikit-learn's ``LogisticRegression`` objective:
    intercept unpenalised; RFS used its defaults, ``C=1``), on L2-normalised features when
    ``normalize`` (then apply the head to normalised features: ``probe_logits``).

    Newton's method with a backtracking (Armijo) line search, batched over problems; the Newton
    system is solved by conjugate gradients with Hessian-vector products, so no ``(ways * D)^2``
    Hessian is formed. The optimal W lies in the span of the support features, so when
    ``S < D`` the problem is solved in that S-dimensional span (an orthonormal basis by QR) and
    mapped back: the same solution, smaller systems. Stops when every problem's gradient
    (max-norm, objective divided by ``C * S``) is below ``tol`` (default: 1e-10 in float64, 1e-5
    in lower precision, where 1e-10 is out of reach) or after ``max_iter`` steps.
    The intercept is determined up to a constant shared by all classes (softmax cannot see it);
    the returned one has mean zero over classes.
    """
    _check(fs, sy, ways)
    if not C > 0:
        raise ValueError(f"C (inverse L2 strength) must be > 0, got {C}")
    x = F.normalize(fs, dim=-1) if normalize else fs
    if tol is None:
        tol = 1e-10 if x.dtype == torch.float64 else 1e-5
    n_prob, s, d = x.shape
    basis = None
    if s < d:  # W = W_r Q^T with Q an orthonormal basis of the support features' span
        basis, _ = torch.linalg.qr(x.transpose(1, 2))  # [P, D, S]
        x = x @ basis
    y = one_hot(sy, ways, x.dtype)
    penalty = 1.0 / (C * s)  # the objective divided by C * S: gradients of order 1 for any S
    w = x.new_zeros(n_prob, ways, x.shape[-1])
    b = x.new_zeros(n_prob, ways)

    def hess_vec(p: Tensor, vw: Tensor, vb: Tensor) -> tuple[Tensor, Tensor]:
        z = x @ vw.transpose(1, 2) + (vb.unsqueeze(1) if fit_intercept else 0)  # [P, S, ways]
        hz = p * z - p * (p * z).sum(-1, keepdim=True)  # softmax Jacobian per example
        return hz.transpose(1, 2) @ x / s + penalty * vw, (hz.sum(1) / s if fit_intercept else torch.zeros_like(vb))

    for _ in range(max_iter):
        logits = linear_logits(x, w, b)
        p = torch.softmax(logits, -1)
        r = (p - y) / s
        gw, gb = r.transpose(1, 2) @ x + penalty * w, (r.sum(1) if fit_intercept else torch.zeros_like(b))
        gnorm = torch.maximum(gw.abs().amax((1, 2)), gb.abs().amax(1))
        if bool((gnorm < tol).all()):
            break
        # Problems already converged get a zero right-hand side, hence a zero step.
        todo = (gnorm >= tol).to(x.dtype)
        dw, db = _conjugate_gradient(lambda vw, vb, p=p: hess_vec(p, vw, vb), -gw * todo.view(-1, 1, 1),
                                     -gb * todo.view(-1, 1), cg_iter, rtol=torch.clamp(gnorm.sqrt(), max=0.5))
        # Backtracking (Armijo), all problems together: halve the step of those not yet accepted.
        # The logits are affine in the step length, so a trial costs no matrix product.
        dl = linear_logits(x, dw, db if fit_intercept else None)
        f0 = _lr_loss(logits, y, w, penalty)
        slope = (gw * dw).sum((1, 2)) + (gb * db).sum(1)
        t, pending = torch.ones_like(f0), torch.ones_like(f0, dtype=torch.bool)
        for _ in range(40):
            f_t = _lr_loss(logits + t.view(-1, 1, 1) * dl, y, w + t.view(-1, 1, 1) * dw, penalty)
            pending = pending & ~(f_t <= f0 + 1e-4 * t * slope)
            if not bool(pending.any()):
                break
            t = torch.where(pending, t / 2, t)
        t = torch.where(pending, torch.zeros_like(t), t)  # no decrease found: converged to rounding
        w, b = w + t.view(-1, 1, 1) * dw, b + t.view(-1, 1) * db
    if basis is not None:
        w = w @ basis.transpose(1, 2)
    return w, b - b.mean(-1, keepdim=True)


def _conjugate_gradient(matvec, rw: Tensor, rb: Tensor, iters: int, rtol: Tensor) -> tuple[Tensor, Tensor]:
    """Solve ``H v = r`` for every problem (``H`` positive semi-definite, ``r`` in its range) by
    conjugate gradients from 0, until each problem's residual is below ``rtol`` times its start."""
    vw, vb = torch.zeros_like(rw), torch.zeros_like(rb)
    pw, pb = rw.clone(), rb.clone()
    rr = (rw * rw).sum((1, 2)) + (rb * rb).sum(1)
    stop = rr * rtol**2
    stuck = torch.zeros_like(rr, dtype=torch.bool)
    for _ in range(iters):
        active = (rr > stop) & ~stuck
        if not bool(active.any()):
            break
        hw, hb = matvec(pw, pb)
        php = (pw * hw).sum((1, 2)) + (pb * hb).sum(1)
        stuck = stuck | (active & (php <= 0))  # no curvature left along p (rounding): keep what it has
        active = active & ~stuck
        alpha = torch.where(active, rr / torch.where(active, php, torch.ones_like(php)), torch.zeros_like(rr))
        vw, vb = vw + alpha.view(-1, 1, 1) * pw, vb + alpha.view(-1, 1) * pb
        rw, rb = rw - alpha.view(-1, 1, 1) * hw, rb - alpha.view(-1, 1) * hb
        rr_new = (rw * rw).sum((1, 2)) + (rb * rb).sum(1)
        beta = torch.where(active, rr_new / torch.where(active, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        pw, pb = rw + beta.view(-1, 1, 1) * pw, rb + beta.view(-1, 1) * pb
        rr = rr_new
    return vw, vb


def probe_logits(fq: Tensor, weight: Tensor, bias: Tensor, normalize: bool = True) -> Tensor:
    """Query logits of a ``logistic_regression`` head (features normalised as in the fit)."""
    return linear_logits(F.normalize(fq, dim=-1) if normalize else fq, weight, bias)


def fit_cosine_head(fs: Tensor, sy: Tensor, ways: int, scale: float = 10.0, steps: int = 100,
                    lr: float = 1.0) -> Tensor:
    """Class weights ``[P, ways, D]`` of a Baseline++ head fitted to every problem's support set
    at a fixed ``scale``: ``steps`` full-batch gradient steps of the mean cross-entropy by the
    platform's inner loop (``adapt``), all problems at once, from the normalised class means (a
    deterministic start that already classifies by cosine to the prototype)."""
    _check(fs, sy, ways)
    y = one_hot(sy, ways, fs.dtype)
    start = F.normalize(y.transpose(1, 2) @ fs, dim=-1)

    def forward(params: dict[str, Tensor], f: Tensor) -> Tensor:
        return cosine_logits(f, params["weight"], scale)

    def loss(logits: Tensor, target: Tensor) -> Tensor:  # summed over problems: each its own gradient
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum") / target.shape[1]

    with torch.enable_grad():
        params = adapt(forward, {"weight": start}, fs, sy, loss, steps, lr, first_order=True)[-1]
    return params["weight"].detach()
