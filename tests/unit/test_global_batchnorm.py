"""``GlobalBatchNorm`` on 2 gloo ranks sharing a batch gives the one-process forward and gradient
of Conv4 (plain batch norm does not: each rank would normalise its share alone)."""
from __future__ import annotations

import copy

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from metaft.models import Conv4
from metaft.runtime.distributed import all_reduce_sum_, global_batchnorm

WORLD, BATCH = 2, 10
SHARES = (6, 4)  # uneven, as fine-tuning batches may be


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.rand(BATCH, 1, 28, 28, generator=g), torch.randint(5, (BATCH,), generator=g)


def _net(bn: str) -> torch.nn.Module:
    torch.manual_seed(1)
    return Conv4(filters=4, out_features=5, bn=bn)


def _grads(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    net.zero_grad()
    F.cross_entropy(net(x), y, reduction="sum").div(BATCH).backward()  # a share of the global mean
    return [p.grad.clone() for p in net.parameters()]


def _rank(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        x, y = _inputs()
        lo = sum(SHARES[:rank])
        x, y = x[lo : lo + SHARES[rank]], y[lo : lo + SHARES[rank]]
        result = {}
        for name, bn, convert in (("synced", "transductive", True), ("plain", "transductive", False),
                                  ("running", "running", True)):
            net = _net(bn)
            if convert:
                global_batchnorm(net)
            grads = _grads(net, x, y)
            all_reduce_sum_(grads)
            result[name] = {"grads": grads, "state": net.state_dict()}
        if rank == 0:
            torch.save(result, out)
    finally:
        torch.distributed.destroy_process_group()


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = torch.sqrt(sum(((u - v) ** 2).sum() for u, v in zip(a, b)))
    return float(num / torch.sqrt(sum((v**2).sum() for v in b)))


def test_two_ranks_give_the_full_batch_gradient_and_statistics(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank, args=(f"file://{tmp_path / 'pg'}", str(out)), nprocs=WORLD)  # one spawn: ~all the time
    got = torch.load(out, weights_only=True)
    x, y = _inputs()
    full = _grads(_net("transductive"), x, y)
    assert _rel(got["synced"]["grads"], full) < 1e-5
    assert _rel(got["plain"]["grads"], full) > 1e-2  # per-rank statistics: another gradient
    one = _net("running")  # running statistics: updated from the global batch
    _grads(one, x, y)
    for k, v in one.state_dict().items():
        torch.testing.assert_close(got["running"]["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_one_process_and_eval_mode_are_plain_batch_norm():
    x, _ = _inputs()
    plain = _net("running")
    synced = global_batchnorm(copy.deepcopy(plain))
    assert plain.state_dict().keys() == synced.state_dict().keys()
    assert torch.equal(plain(x), synced(x))
    plain.eval(), synced.eval()
    assert torch.equal(plain(x), synced(x))


def test_pretraining_and_fine_tuning_use_it_and_episodic_learners_do_not(run_config):
    """Batches shared out across ranks (pre-training, fine-tuning) get ``GlobalBatchNorm``;
    episodic learners keep plain batch norm, whose statistics stay within each task."""
    from omegaconf import open_dict

    from metaft.finetune.module import FineTuner
    from metaft.runtime.distributed import GlobalBatchNorm
    from metaft.stages.meta import build
    from tests.integration.test_heads_train import DATASET

    kinds = {}
    for algorithm in ("pretrain", "maml", "protonet"):
        cfg = run_config("train", [f"algorithm={algorithm}", "model=conv4", "model.filters=4"], algorithm)
        with open_dict(cfg):
            cfg.dataset = DATASET  # build only: the data are never fed to the Conv4
        bns = [m for m in build(cfg)[1].net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        kinds[algorithm] = {type(m) for m in bns}
    assert kinds == {"pretrain": {GlobalBatchNorm}, "maml": {torch.nn.BatchNorm2d}, "protonet": {torch.nn.BatchNorm2d}}
    ft = FineTuner(Conv4(filters=4), "classification", optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    assert all(type(m) is GlobalBatchNorm for m in ft.net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def test_fine_tuning_evaluation_is_the_whole_split_on_every_rank():
    """Evaluation batches are the one-process batches on every rank (transductive batch norm makes
    a prediction depend on its batch), whatever the number of ranks."""
    from metaft.finetune.targets import SinusoidTarget

    dm = SinusoidTarget(shots=5, eval_batch_size=300)
    x, _ = dm.splits["test"]
    for rank, world in ((0, 1), (0, 2), (1, 2), (2, 3)):
        dm.rank_and_world = lambda r=rank, w=world: (r, w)
        batches = [b[0] for b in dm.test_dataloader()]
        assert [len(b) for b in batches] == [300, 300, 300, 100]
        assert torch.equal(torch.cat(batches), x)
