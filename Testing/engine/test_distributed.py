"""Data-parallel training under torchrun (gloo on the CPU): one report, one model, every rank in step."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from AsymSegTrainer import distributed
from AsymSegTrainer.network import load_model_file


def torchrun(*args, timeout=600):
    """``torchrun --standalone --nproc-per-node 2 -m AsymSegTrainer ...`` (as torch's module, so no PATH lookup)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "AsymSegTrainer", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def train_args(dataset, classes, train, val, out, iterations, *extra):
    return ["train", "--dataset", dataset, "--classes", classes, "--train-cases", train, "--val-cases", val,
            "--preset", "asymmetric-combination", "--iterations", iterations, "--batch-size", 2,
            "--validation-interval", 2, "--device", "cpu", "--out", out, "--events", *extra]


def check_one_report(proc, out):
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # only rank 0 writes stdout
    types = [e["type"] for e in events]
    assert types[0] == "start" and events[0]["world_size"] == 2
    assert types.count("start") == 1 and types.count("done") == 1 and types[-1] == "done"
    assert events[-1]["exit_code"] == 0 and events[-1]["model"] == str(out / "model_best.pt")
    assert sorted(p.name for p in out.glob("*.pt")) == ["model_best.pt", "model_last.pt"]
    assert "[rank 1] finished (exit code 0)" in proc.stderr
    return events


def test_torchrun_two_ranks_train_the_combination_with_one_report(phantom_dataset, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(*train_args(phantom_dataset, "lesion=1", "phantom_000,phantom_001", "phantom_002", out, 4,
                                "--patch-size", 16, 16, 16))
    events = check_one_report(proc, out)
    assert [e["iteration"] for e in events if e["type"] == "validation"] == [2, 4]
    state, meta = load_model_file(out / "model_last.pt")
    assert state["iteration"] == 4 and meta["technique"]["update"] == "sequential"
    assert not any(k.startswith("module.") for k in state["state_dict"])  # the underlying network, not DDP's
    assert len((out / "events.jsonl").read_text().splitlines()) == len(events)


@pytest.mark.slow
def test_torchrun_on_brats_with_the_combination(brats, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(*train_args(brats, "tumor_core=1,3,4", "brats_2013_pat0005_1,brats_2013_pat0006_1",
                                "brats_2013_pat0003_1", out, 2, "--patch-size", 32, 32, 32,
                                "--target-spacing", 2, 2, 2), timeout=1200)
    check_one_report(proc, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    world = distributed.world_from_environment()
    device = distributed.start(world, torch.device("cpu"))
    try:
        results[rank] = (world.main, distributed.any_rank(world, rank == 1, device),
                         distributed.any_rank(world, False, device), distributed.from_main(world, f"from {rank}"),
                         distributed.error_message(world, ValueError("bad job") if rank == 0 else None))
    finally:
        distributed.stop()


def test_collectives_keep_the_ranks_in_step():
    import torch.multiprocessing as mp
    results = mp.Manager().dict()
    mp.spawn(_collectives, args=(_free_port(), results), nprocs=2, join=True)
    assert results[0] == (True, True, False, "from 0", "bad job")
    assert results[1] == (False, True, False, "from 0", "bad job")


def test_a_world_of_one_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = distributed.world_from_environment()
    assert (world.rank, world.size, world.main, world.distributed) == (0, 1, True, False)
    model = torch.nn.Linear(2, 2)
    assert distributed.data_parallel(model, world, torch.device("cpu")) is model
    assert distributed.any_rank(world, True, torch.device("cpu")) is True
    assert distributed.from_main(world, 5) == 5


def test_a_stop_file_stops_every_rank_and_resume_continues(phantom_dataset, tmp_path):
    import time
    out = tmp_path / "run"
    args = train_args(phantom_dataset, "lesion=1", "phantom_000,phantom_001", "phantom_002", out, 100000,
                      "--patch-size", 16, 16, 16)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "AsymSegTrainer", *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and '"phase": "train"' not in ((out / "events.jsonl").read_text()
                                                                if (out / "events.jsonl").exists() else ""):
        time.sleep(0.5)
    (out / "STOP").write_text("stop")
    stdout, stderr = proc.communicate(timeout=300)
    events = [json.loads(line) for line in stdout.splitlines()]
    assert events[-1]["status"] == "cancelled" and events[-1]["exit_code"] == 10, stderr[-2000:]
    assert "[rank 1] cancelled (exit code 10)" in stderr  # the other rank stopped at the same iteration
    stopped = load_model_file(out / "model_last.pt")[0]["iteration"]
    resumed = torchrun(*train_args(phantom_dataset, "lesion=1", "phantom_000,phantom_001", "phantom_002", out,
                                   stopped + 2, "--patch-size", 16, 16, 16, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_model_file(out / "model_last.pt")[0]["iteration"] == stopped + 2
