"""Several processes sharing one study: a piece is taken by one of them, a claim of an ended process
is taken over, and two workers give the rows one process gives."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from metaft.study import claims
from tests.study.test_driver import TOY, maml_ckpts, rows


def _ended_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_claim_is_taken_once_given_back_and_taken_over_from_an_ended_process(tmp_path):
    path = tmp_path / "piece.claim"
    assert claims.take(path) and path.is_file()
    # Held by this (running) process: another take fails and nothing changes.
    other = path.read_text()
    with claims.held(tmp_path / "other.claim") as mine:
        assert mine
    assert not (tmp_path / "other.claim").exists()  # given back at the end of the block
    claims.release(path)
    assert not path.exists()
    # A running process's claim (a sleeping child) is left alone; an ended one's is taken over.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(other.split()[0] + f" {child.pid}")
        assert not claims.take(path) and claims.others(tmp_path) == [path]
        assert path.read_text().endswith(str(child.pid))
    finally:
        child.kill()
        child.wait()
    path.write_text(other.split()[0] + f" {_ended_pid()}")
    assert claims.others(tmp_path) == [] and claims.take(path)
    assert path.read_text() == other  # now this process's
    # An empty claim is one being written, unless it has been empty for long (its writer was killed).
    claims.release(path)
    path.write_text("")
    assert not claims.take(path)
    old = time.time() - 2 * claims.UNWRITTEN_S
    os.utime(path, (old, old))
    assert claims.take(path) and path.read_text() == other


def test_two_workers_give_the_rows_of_one_process(tmp_path):
    from metaft.study.driver import main

    ckpts = maml_ckpts(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["sinusoid", *TOY, "--out", str(one), "--ckpt", ckpts]) == 0
    assert main(["sinusoid", *TOY, "--out", str(two), "--ckpt", ckpts, "--workers", "2"]) == 0
    timings = ("seconds_to_final", "seconds_per_step")

    def table(d):
        return sorted(tuple(sorted((k, v) for k, v in r.items() if k not in timings)) for r in rows(d / "study.csv"))

    assert table(one) == table(two) and len(table(one)) > 0
    assert (two / "study.md").is_file() and not list((two / "rows").rglob("*.claim"))
    assert (two / "workers" / "worker1.log").is_file()


def test_a_piece_another_running_process_holds_is_left_to_it(tmp_path, capsys):
    from metaft.study.driver import main

    ckpts, out = maml_ckpts(tmp_path), tmp_path / "study"
    assert main(["sinusoid", *TOY, "--out", str(out), "--ckpt", ckpts]) == 0
    held = out / "rows" / "NNone_K5" / "maml_finetune.claim"
    for lost in [*held.parent.glob("maml_seed*_finetune.csv"), *held.parent.glob("*_probe.csv"), out / "study.csv"]:
        lost.unlink()  # as if stopped before these pieces
    capsys.readouterr()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        held.write_text(f"{claims.socket.gethostname()} {child.pid}")
        assert main(["sinusoid", *TOY, "--out", str(out), "--ckpt", ckpts]) == 0
    finally:
        child.kill()
        child.wait()
    # Every other piece is done; the held one is not, and no report is written while it is held.
    assert "still work on 1 pieces" in capsys.readouterr().out
    assert not (out / "study.csv").exists() and (out / "rows" / "NNone_K5" / "maml_seed0_probe.csv").is_file()
    assert not list(held.parent.glob("maml_seed*_finetune.csv"))
    # Its process ended: the next run takes the piece over and writes the report.
    assert main(["sinusoid", *TOY, "--out", str(out), "--ckpt", ckpts]) == 0
    assert len(list(held.parent.glob("maml_seed*_finetune.csv"))) == 2 and (out / "study.md").is_file()


def test_the_report_of_a_study_in_progress_says_it_is_partial(tmp_path):
    from metaft.study.driver import main

    ckpts, out = maml_ckpts(tmp_path), tmp_path / "study"
    assert main(["sinusoid", *TOY, "--out", str(out), "--ckpt", ckpts]) == 0
    assert "PARTIAL" not in (out / "study.md").read_text()
    for lost in (out / "rows" / "NNone_K5").glob("maml_seed*.csv"):
        lost.unlink()  # as if the study were still on K=5
    assert main(["report", str(out)]) == 0
    text = (out / "study.md").read_text()
    assert "**PARTIAL: 6 of 24 pieces are not done yet" in text and "K=2" in text


def test_a_stage_one_run_another_process_trains_is_waited_for_not_trained_again(tmp_path, monkeypatch):
    from metaft.study import driver, stage1

    cfg = driver.load_config("sinusoid", ["stage1.seeds=[0,1]", "inits={maml: maml}", "stage1.budgets=[]"])
    out = tmp_path / "study"
    run0 = out / "stage1" / "maml_seed0"
    (run0 / "checkpoints").mkdir(parents=True)
    # Another process claims seed 0 and finishes it a moment later; this one trains seed 1 only.
    script = (f"import pathlib, time; time.sleep(1.5); r = pathlib.Path({str(run0)!r}); "
              "(r / 'checkpoints' / 'best.ckpt').write_text('x'); (r / 'results.json').write_text('{}')")
    other = subprocess.Popen([sys.executable, "-c", script])
    threading.Thread(target=other.wait, daemon=True).start()  # reaped when it ends, as another process's would be
    (out / "stage1" / "maml_seed0.claim").write_text(f"{claims.socket.gethostname()} {other.pid}")
    trained = []

    def fake_run_all(cmds, logs, jobs):
        for log in logs:
            trained.append(log.parent.name)
            (log.parent / "checkpoints").mkdir(parents=True)
            (log.parent / "checkpoints" / "best.ckpt").write_text("x")
            (log.parent / "results.json").write_text("{}")
        return [0] * len(cmds)

    monkeypatch.setattr(stage1, "run_all", fake_run_all)
    monkeypatch.setattr(stage1, "WAIT_S", 0.1)
    ckpts = stage1.train_missing(cfg, out, {})
    assert trained == ["maml_seed1"]
    assert ckpts["maml", 0] == run0 / "checkpoints" / "best.ckpt" and not (out / "stage1" / "maml_seed1.claim").exists()


def test_a_stage_one_slot_is_reused_as_soon_as_any_run_ends(tmp_path):
    from metaft.study import stage1

    # Two slots: the first run waits for a file that only the third run writes. Run in batches of
    # two, the third would start after the first ended (which then times out); with a slot freed
    # when any run ends, it starts when the short second one ends, and the first is released.
    release = tmp_path / "release"
    wait = (f"import pathlib, time; p = pathlib.Path({str(release)!r}); t = time.time()\n"
            "while not p.exists() and time.time() - t < 60: time.sleep(0.05)\n"
            "print('released' if p.exists() else 'timed out')")
    cmds = [[sys.executable, "-c", wait], [sys.executable, "-c", "pass"],
            [sys.executable, "-c", f"import pathlib; pathlib.Path({str(release)!r}).write_text('go')"]]
    logs = [tmp_path / f"{i}.log" for i in range(3)]
    assert stage1.run_all(cmds, logs, jobs=2) == [0, 0, 0]
    assert logs[0].read_text().strip() == "released"


def test_no_workers_is_refused_before_anything_runs(tmp_path, capsys):
    from metaft.study.driver import main

    assert main(["sinusoid", *TOY, "--out", str(tmp_path / "s"), "--workers", "0"]) == 2
    assert "--workers 0: give 1 or more processes" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_another_machines_claim_counts_as_ended_once_its_holder_stops_refreshing_it(tmp_path):
    # Its process cannot be asked (a job on another node of a cluster): the claim's age tells.
    path = tmp_path / "piece.claim"
    path.write_text("another-node 12345")
    assert not claims.take(path) and claims.others(tmp_path) == [path]
    old = time.time() - 2 * claims.STALE_S
    os.utime(path, (old, old))
    assert claims.others(tmp_path) == [] and claims.take(path)
    # This process's claims are kept fresh while held (the heartbeat thread calls refresh), then no more.
    assert path.read_text() == f"{claims.socket.gethostname()} {os.getpid()}"
    assert claims._beat is not None and claims._beat.is_alive()
    os.utime(path, (old, old))
    claims.refresh()
    assert time.time() - path.stat().st_mtime < claims.STALE_S
    claims.release(path)
    assert not path.exists() and path not in claims._mine


def test_a_claim_seen_ended_but_taken_over_meanwhile_is_left_to_its_new_holder(tmp_path, monkeypatch):
    # This process looked when the claim was an ended process's; before it removes it, another process
    # has taken the piece over (a running child's claim now). Removing it then would let both compute.
    path = tmp_path / "piece.claim"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(f"{claims.socket.gethostname()} {child.pid}")
        real, looks = claims.holder_alive, []

        def first_look_is_stale(p):
            looks.append(p)
            return False if len(looks) == 1 else real(p)

        monkeypatch.setattr(claims, "holder_alive", first_look_is_stale)
        assert not claims.take(path)
        assert path.read_text().endswith(str(child.pid)) and len(looks) == 2
        assert not path.with_name(path.name + ".takeover").exists()
    finally:
        child.kill()
        child.wait()


def test_a_takeover_in_progress_is_left_alone_and_one_left_by_a_killed_process_cleared(tmp_path):
    path = tmp_path / "piece.claim"
    lock = path.with_name(path.name + ".takeover")
    path.write_text(f"{claims.socket.gethostname()} {_ended_pid()}")
    lock.write_text("")  # another process is removing the ended claim
    assert not claims.take(path) and lock.exists() and path.exists()
    old = time.time() - 2 * claims.UNWRITTEN_S
    os.utime(lock, (old, old))  # ... and was killed doing it
    assert not claims.take(path) and not lock.exists()
    assert claims.take(path) and path.read_text() == f"{claims.socket.gethostname()} {os.getpid()}"
    claims.release(path)
