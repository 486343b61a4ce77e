"""The benchmark's correctness gate and output: every contender forms metaft's meta-gradient."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench
from metaft.models import MLP, Conv4

pytest.importorskip("higher")
pytest.importorskip("torchopt")

def _tiny_conv_episode(n: int, g: torch.Generator) -> bench.Episode:
    ways, queries = 3, 2
    sx = torch.rand(n, ways, 1, 16, 16, generator=g)
    qx = torch.rand(n, ways * queries, 1, 16, 16, generator=g)
    sy = torch.arange(ways).expand(n, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(n, -1).contiguous()
    return bench.Episode(sx, sy, qx, qy)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops gain nothing from threads, and on a busy machine an OpenMP thread that is not
    scheduled stalls the others: a 20 ms step then takes seconds. (main() also sets threads.)"""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# The suites' shapes, shrunk so that float64 runs in well under a second.
TINY = {
    "sinusoid": bench.Suite("sinusoid", "regression", 3, 0.05, lambda: MLP(1, (8, 8), 1), bench._sinusoid_episode),
    "omniglot": bench.Suite("omniglot", "classification", 2, 0.4, lambda: Conv4(1, 16, 4, 3), _tiny_conv_episode),
}


@pytest.mark.parametrize("suite", ["sinusoid", "omniglot"])
@pytest.mark.parametrize("algorithm", bench.ALGORITHMS)
def test_contenders_form_metafts_meta_gradient(suite, algorithm):
    """higher, torchopt and metaft's other path (vmap vs loop) agree with metaft in float64."""
    contenders = ["metaft-alt", "higher", "torchopt", "higher-same"]
    worst = bench.check_gradients(TINY[suite], algorithm, contenders, torch.device("cpu"), tasks=2)
    assert worst < 1e-9


def test_gate_catches_a_different_gradient(monkeypatch):
    """A contender that drops the second-order terms must fail the gate (it is not vacuous)."""
    real = bench.build_step

    def wrong(contender, learner, episode, algorithm):
        if contender == "higher":
            learner.first_order = True
            return bench.metaft_step(learner, episode)
        return real(contender, learner, episode, algorithm)

    monkeypatch.setattr(bench, "build_step", wrong)
    with pytest.raises(AssertionError, match="higher's meta-gradient"):
        bench.check_gradients(TINY["sinusoid"], "maml", ["higher"], torch.device("cpu"), tasks=2)


def test_peak_memory_sees_torch_allocations():
    """The CPU method (profiler allocation events) sees a tensor allocated and freed in the step."""

    def step() -> None:
        x = torch.empty(4 * 2**20, dtype=torch.uint8)  # 4 MiB
        x.fill_(1)
        del x

    assert 3.9 <= bench.peak_memory_mb(step, torch.device("cpu")) < 5.0


def test_tiny_json_run_writes_well_formed_rows(tmp_path, capsys):
    out = tmp_path / "rows.json"
    rc = bench.main(
        ["--suite", "sinusoid", "--algorithms", "maml,reptile", "--meta-batch", "2", "--rounds", "2",
         "--round-seconds", "0.01", "--threads", "1", "--json", str(out)]
    )
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [(r["algorithm"], r["contender"]) for r in rows] == [
        (a, c) for a in ("maml", "reptile") for c in ("metaft", "metaft-alt", "higher", "torchopt")
    ]
    by = {(r["algorithm"], r["contender"]): r for r in rows}
    for r in rows:
        assert r["suite"] == "sinusoid"
        # The figures are the ones the row's own timing implies: 2 tasks per step_ms.
        assert r["tasks_per_s"] == pytest.approx(2 / (r["step_ms"] / 1e3), rel=1e-9)
        # A step allocates its graph: a memory probe that saw nothing would read 0. A CPU time
        # that is not the process's own would not stay near the wall time on one thread.
        assert r["peak_mem_mb"] > 0 and 0 < r["cpu_ms"] <= 3 * r["step_ms"] + 1
        # Ratios are against the named contender of the same algorithm: 1 for itself.
        for other in ("higher", "torchopt"):
            ratio = r[f"vs_{other}"]
            if r["contender"] == other:
                assert ratio == 1.0
            else:  # a per-round median, near the ratio of the medians
                expected = by[(r["algorithm"], other)]["step_ms"] / r["step_ms"]
                assert expected / 3 < ratio < expected * 3, (r, other)
        assert r["path"] in ("batched", "loop")
    assert {r["path"] for r in rows if r["contender"] == "metaft"} == {"batched"}  # auto: MLP vectorizes
    printed = capsys.readouterr().out
    assert "x higher" in printed and "data pipeline" in printed


@pytest.mark.parametrize("vectorize", ["true", "false"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_evaluation_adapts_under_lightnings_grad_modes(sinusoid_episode, vectorize, mode):
    """The inner loop's plain-autograd gradient falls back to torch.func.grad where autograd
    records nothing (Lightning evaluates under inference_mode); the numbers do not change."""
    learner = bench.make_learner(TINY["sinusoid"], "maml", vectorize=vectorize).double()
    expected = learner.query_outputs(sinusoid_episode, 2, first_order=True, all_steps=True)
    with getattr(torch, mode)():
        got = learner.query_outputs(sinusoid_episode, 2, first_order=True, all_steps=True)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert not torch.equal(expected[:, 0], expected[:, -1])  # adaptation did happen


@pytest.mark.parametrize("argv,message", [(["--threads", "-1"], "--threads must be >= 1, got -1"),
                                          (["--rounds", "0"], "--rounds must be >= 1, got 0"),
                                          (["--meta-batch", "-2"], "--meta-batch must be >= 1, got -2"),
                                          (["--round-seconds", "0"], "--round-seconds must be > 0")])
def test_bad_options_say_which(argv, message):
    with pytest.raises(SystemExit, match=message):
        bench.main(argv)


def test_reptile_paper_step_equals_the_plain_adam_loop(monkeypatch):
    """benchmarks/reptile_loop.py's gate: metaft's Reptile step with the paper's inner loop and the
    torch.optim.Adam loop a user writes make the same two meta-steps in float64; a different inner
    step size in the plain loop is caught."""
    from benchmarks import reptile_loop

    assert reptile_loop.gate() < 1e-12
    monkeypatch.setattr(reptile_loop, "INNER_LR", 2e-3)  # both would use it: change only the plain loop's Adam
    monkeypatch.setattr(reptile_loop, "make_learner", lambda seed=0, lr=1e-3: reptile_loop.Reptile(
        net=_seeded_conv(seed), task="classification", inner_lr=lr, inner_steps=reptile_loop.STEPS,
        inner_optimizer="adam", inner_betas=[0.0, 0.999], inner_state="carry", inner_batch=reptile_loop.BATCH,
        optimizer=lambda params: torch.optim.SGD(params, lr=1.0)))
    assert reptile_loop.gate() > 1e-6


def _seeded_conv(seed: int) -> Conv4:
    torch.manual_seed(seed)
    return Conv4(1, 28, 64, 5, pool="max")
