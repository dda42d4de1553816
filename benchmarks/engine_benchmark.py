"""Engine benchmark: ratios measured in one run on one machine (a script, not a test).

1. engine training step (patch sampling included) / a bare ``forward + loss.backward() + step``
   loop on the same network and batch (goal <= 1.10 for vanilla);
2. adversarial / vanilla, mixup / vanilla and combination / vanilla step-time ratios, each with
   the official ``sequential`` update structure (one optimiser step per batch) and with ``sum``
   (one step on the summed terms), and sequential / sum;
3. whole-volume inference of a 240x240x155 two-channel volume through the engine /
   MONAI ``sliding_window_inference`` with the same network and settings (goal <= 1.05);
4. peak memory (RSS) of a training run on the BRATS data (or phantoms when it is absent);
5. data-parallel training: seconds per iteration with ``torchrun --nproc-per-node 2`` (each rank
   its own batch, gradients averaged) / one process, from the runs' own event time stamps.

Blocks of engine and bare iterations alternate and the median per-iteration time of each is
used, so load from other processes affects both sides alike.

    python benchmarks/engine_benchmark.py [--device cpu] [--iterations 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from AsymSegTrainer.events import EventSink
from AsymSegTrainer.jobspec import job_from_dataset, job_from_dict
from AsymSegTrainer.prediction import predict_logits
from AsymSegTrainer.training import Trainer

BRATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset001_BraTS2015_DeepMedic6"
CASES = ["brats_2013_pat0005_1", "brats_2013_pat0006_1"]


def dataset(tmp: Path):
    if BRATS.is_dir():
        return BRATS, ["tumor_core=1,3,4"], CASES, "BRATS (2 cases, 240x240x155, 2 channels)"
    from AsymSegTrainer.phantoms import make_phantom_dataset
    return (make_phantom_dataset(tmp / "phantoms", num_cases=2, shape=(96, 96, 96)), ["lesion=1"],
            ["phantom_000", "phantom_001"], "phantoms (2 cases, 96^3) - BRATS folder absent")


def trainer_for(data, classes, cases, out: Path, technique, args) -> Trainer:
    spec = job_from_dataset(data, classes, cases, output=str(out), technique=technique, device=args.device,
                            patch_size=[args.patch] * 3, batch_size=args.batch, iterations=10**6)
    trainer = Trainer(job_from_dict(spec, out.parent), EventSink(progress_bar=False))
    trainer._load_cases()
    trainer._build(resume=False)
    trainer.model.train()
    return trainer


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_block(fn, n, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n


def step_times(trainer: Trainer, args, blocks: int) -> dict:
    """Median seconds per iteration: engine (sampling + step) and a bare loop on one fixed batch."""
    from AsymSegTrainer.sampling import PatchSampler
    rare = [j for j, r in enumerate(trainer.job.rarity) if r > 0]
    sampler = PatchSampler(trainer.train_cases, trainer.job.patch_size, rare, trainer.job.foreground_fraction)
    rng, gen = np.random.default_rng(0), torch.Generator(device=trainer.device).manual_seed(0)
    x, y = trainer._batch(sampler, rng, None)
    model, opt = trainer.model, trainer.optimizer

    def engine():
        trainer._step(*trainer._batch(sampler, rng, None), rng, gen)

    def bare():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    engine(), bare()  # warm-up
    out = {"engine": [], "bare": []}
    for _ in range(blocks):
        out["engine"].append(time_block(engine, args.iterations, trainer.device))
        out["bare"].append(time_block(bare, args.iterations, trainer.device))
    return {k: statistics.median(v) for k, v in out.items()}


def inference_times(trainer: Trainer, args, repeats: int) -> dict:
    from monai.inferers import sliding_window_inference
    image = np.random.default_rng(0).standard_normal((2, 155, 240, 240), dtype=np.float32)
    model, device, roi = trainer.model, trainer.device, [args.patch] * 3

    @torch.no_grad()
    def monai():
        model.eval()
        x = torch.from_numpy(image).unsqueeze(0).to(device)
        return sliding_window_inference(x, roi, 4, model, overlap=0.5, mode="gaussian")[0].float().cpu()

    def engine():
        return predict_logits(model, image, roi, device, 3, overlap=0.5, amp=False)

    times = {"engine": [], "monai": []}
    for _ in range(repeats):
        for name, fn in (("engine", engine), ("monai", monai)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def peak_training_memory(data, classes, cases, out: Path, args) -> float:
    """Peak RSS (GiB) of a short real training run in a child process (data loading included)."""
    cmd = [sys.executable, "-c", "import resource, sys; from AsymSegTrainer.cli import main; main(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)",
           "train", "--dataset", str(data), "--classes", *classes, "--train-cases", ",".join(cases),
           "--iterations", "5", "--patch-size", *[str(args.patch)] * 3, "--batch-size", str(args.batch),
           "--device", args.device, "--out", str(out), "--preset", "asymmetric-combination"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(proc.stderr.strip().splitlines()[-1]) / 2**20


def seconds_per_iteration(data, classes, cases, out: Path, args, processes: int, iterations: int = 12) -> float:
    """Training seconds per iteration of a ``train`` run with ``processes`` ranks (start-up excluded)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] \
        if processes > 1 else [sys.executable]
    cmd = [*launcher, "-m", "AsymSegTrainer", "train", "--dataset", str(data), "--classes", *classes,
           "--train-cases", ",".join(cases), "--iterations", str(iterations), "--patch-size", *[str(args.patch)] * 3,
           "--batch-size", str(args.batch), "--device", args.device, "--out", str(out), "--preset", "vanilla",
           "--events"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    times = [(e["iteration"], e["time"]) for e in map(json.loads, proc.stdout.splitlines())
             if e["type"] == "progress" and e["phase"] == "train"]
    (first, t0), (last, t1) = times[0], times[-1]
    return (t1 - t0) / (last - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iterations", type=int, default=10, help="iterations per timed block")
    parser.add_argument("--blocks", type=int, default=3, help="alternating timed blocks per side")
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, classes, cases, what = dataset(tmp)
        vanilla = trainer_for(data, classes, cases, tmp / "vanilla", "vanilla", args)
        print(f"data: {what}; device {vanilla.device}; patch {args.patch}^3, batch {args.batch}, "
              f"network {vanilla.job.network}", flush=True)
        steps = step_times(vanilla, args, args.blocks)
        results = {"step_seconds": steps, "engine_over_bare": steps["engine"] / steps["bare"]}
        print(f"1. vanilla step: engine {steps['engine']:.3f} s, bare loop {steps['bare']:.3f} s, "
              f"ratio {results['engine_over_bare']:.3f} (goal <= 1.10)", flush=True)
        for preset in ("asymmetric-adversarial", "asymmetric-mixup", "asymmetric-combination"):
            for update in ("sequential", "sum"):
                trainer = trainer_for(data, classes, cases, tmp / f"{preset}-{update}",
                                      {"preset": preset, "update": update}, args)
                results[f"{preset}_{update}_over_vanilla"] = step_times(trainer, args, args.blocks)["engine"] \
                    / steps["engine"]
            results[f"{preset}_sequential_over_sum"] = results[f"{preset}_sequential_over_vanilla"] \
                / results[f"{preset}_sum_over_vanilla"]
            print(f"2. {preset} / vanilla step time: sequential {results[f'{preset}_sequential_over_vanilla']:.2f}, "
                  f"sum {results[f'{preset}_sum_over_vanilla']:.2f}; sequential / sum "
                  f"{results[f'{preset}_sequential_over_sum']:.2f}", flush=True)
        inf = inference_times(vanilla, args, repeats=2)
        results["inference_seconds"] = inf
        results["inference_engine_over_monai"] = inf["engine"] / inf["monai"]
        print(f"3. 240x240x155x2 inference: engine {inf['engine']:.2f} s, MONAI sliding_window_inference "
              f"{inf['monai']:.2f} s, ratio {results['inference_engine_over_monai']:.3f} (goal <= 1.05)", flush=True)
        results["peak_training_rss_gib"] = peak_training_memory(data, classes, cases, tmp / "memory", args)
        print(f"4. peak RSS of training (asymmetric-combination, data loading included): "
              f"{results['peak_training_rss_gib']:.2f} GiB; this process: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", flush=True)
        one, two = (seconds_per_iteration(data, classes, cases, tmp / f"ddp{n}", args, n) for n in (1, 2))
        results["ddp_seconds_per_iteration"] = {"1": one, "2": two}
        results["ddp_2_over_1"] = two / one
        print(f"5. data-parallel step: 2 processes {two:.3f} s, 1 process {one:.3f} s per iteration, ratio "
              f"{results['ddp_2_over_1']:.2f} (each rank its own batch: twice the patches per iteration)", flush=True)
        if vanilla.device.type == "cuda":
            results["cuda_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
            print(f"   CUDA peak allocated: {results['cuda_peak_allocated_gib']:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
