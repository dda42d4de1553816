"""Fine-tuning with the paper's techniques: loss, adversarial and mixup terms, asymmetric augmentation.

One iteration (METHOD.md §4, "Update structure"): a clean batch with the margin/focal loss;
with adversarial training, the direction (computed first) and a batch ``(x + r_adv, y)``;
with mixup, the batch mixed with its reverse (``regularizers.mixup_batch``) and the
asymmetric mixup targets. ``update`` "sequential" (the official code) takes one optimiser
step per batch; "sum" one step on the summed terms.
Cancel (SIGTERM / SIGINT / ``OUT/STOP``) finishes the iteration and writes ``model_last.pt``.
"""

from __future__ import annotations

import json
import math
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from . import distributed
from .bundles import load_initial_model
from .calibration import describe as describe_offsets
from .calibration import fit_offsets
from .checkpointing import ValidationCurve, ValidationDecision
from .data import LoadedCase, load_case
from .errors import DivergenceError, InputError, ResourceError
from .events import EventSink
from .files import check_writable_folder, write_json
from .jobspec import LOSSES, Job, load_job
from .locks import LOCK_FILE, FolderLock
from .logits import LogitStatistics
from .losses import AsymmetricLoss, TermLoss, ldam_rarity, logit_adjusted_ce, soft_fbeta_loss
from .metrics import case_metrics, summarize
from .network import build_network, load_model_file, load_weights, network_config, save_model, update_model_meta
from .planning import plan_job
from .postprocessing import choose_postprocessing
from .prediction import predict_logits
from .regularizers import (adversarial_perturbation, choose_patches_to_augment, mixup_batch, mixup_targets,
                           sample_mixup_lambda)
from .runtime import autocast, needs_grad_scaler, resolve_device, seed_everything, versions
from .sampling import PatchSampler

STOP_FILE = "STOP"
LAST, BEST = "model_last.pt", "model_best.pt"
JOB_FILE, VALIDATION_FILE, PLAN_FILE = "job.json", "validation.json", "plan.json"
OUTPUT_FILES = {JOB_FILE, LAST, BEST, VALIDATION_FILE, PLAN_FILE, "logit_statistics_train.json",
                "logit_statistics_validation.json", "events.jsonl", "log.txt", STOP_FILE, LOCK_FILE}
"""Every file ``train`` writes in its output folder (protocol.md, "Output folder of train")."""
_TEMPORARY = re.compile(r"^\.(model_last|model_best|job|validation|plan|logit_statistics_\w+)\.[0-9a-f]{8}\.tmp\.\w+$")
"""files.atomic_output's temporary files of those outputs: left behind only by a killed run."""
RESUMABLE_CHANGES = {"iterations", "device", "amp", "output"}
"""Job fields ``--resume`` may change; any other difference means another run."""
CROSSING_ALARM = 0.2
"""The over-fitting warning: a rare class misses this share more of its validation voxels than of its training ones
(20 points; early in training both are high and close, and a memorised class drives the training share to ~0)."""
POLY_EXPONENT = 0.9  # nnU-Net's polynomial learning-rate decay
OPTIMIZERS = {  # the job's ``optimizer`` choices (protocol.json)
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True),
    # the official code's RMSProp (rho 0.9, eps 1e-4, momentum 0.6); torch's RMSprop has no Nesterov variant
    "rmsprop-official": lambda params, lr: torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-4, momentum=0.6),
}
OFFICIAL_HALVINGS = (17 / 35, 22 / 35, 27 / 35, 30 / 35, 33 / 35)
"""The official code halves the learning rate at epochs 17, 22, 27, 30, 33 of 35 (METHOD.md §5)."""


def learning_rate(initial: float, schedule: str, iteration: int, total: int) -> float:
    """The learning rate of ``iteration`` (1-based) of ``total`` under the job's ``lr_schedule``."""
    progress = (iteration - 1) / total
    if schedule == "official":
        return initial * 0.5 ** sum(progress >= b for b in OFFICIAL_HALVINGS)
    return initial * (1 - progress) ** POLY_EXPONENT


class StopRequest:
    """Set by SIGTERM/SIGINT (when installed on the main thread) or by a ``STOP`` file in the output folder."""

    def __init__(self, output: Path):
        self.stop_file = output / STOP_FILE
        self.signalled = False
        self._previous = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __bool__(self) -> bool:
        return self.signalled or self.stop_file.exists()


@dataclass
class TrainResult:
    status: str  # finished | cancelled
    model: Optional[Path]
    iteration: int
    outputs: Dict[str, str] = field(default_factory=dict)


def _augmentation(seed: int):
    """The run's usual spatial/intensity transforms (MONAI), applied to chosen patches only (eq. 21)."""
    from monai.transforms import Compose, RandAffined, RandGaussianNoised, RandScaleIntensityd

    keys = ["image", "label"]
    transform = Compose([
        RandAffined(keys, prob=1.0, rotate_range=(0.26, 0.26, 0.26), scale_range=(0.1, 0.1, 0.1),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandGaussianNoised("image", prob=0.5, std=0.1),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
    ])
    transform.set_random_state(seed=seed)
    return transform


class Trainer:
    """Runs one job; ``model_path`` stays readable after an error (the last checkpoint written)."""

    def __init__(self, job: Job, sink: EventSink):
        self.job = job
        self.sink = sink
        self.out = job.output
        self.model_path: Optional[Path] = None
        self.lock: Optional[FolderLock] = None
        self.world = distributed.world_from_environment()
        self.device = distributed.start(self.world, resolve_device(job.device))
        self.amp = job.amp and self.device.type == "cuda"
        self.plan: Optional[dict] = None

    # ---------------------------------------------------------------- setup
    def _prepare_output(self, resume: bool) -> None:
        """Lock the folder for this run, check it holds only this engine's files, remove stale temporaries.

        Nothing is written or removed before every check has passed.
        """
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"The output folder {self.out} is a file.", "Choose a folder for the run's outputs.")
        check_writable_folder(self.out)
        self.lock = FolderLock(self.out).acquire()
        names = {p.name for p in self.out.iterdir()}
        temporary = {n for n in names if _TEMPORARY.match(n)}
        # A new run finds at most what a run that failed before training left: its log, its events and
        # the job.json and plan.json the engine wrote for this folder. A user's own job.json, STOP or validation.json
        # is kept.
        own = OUTPUT_FILES if resume or names & {LAST, BEST} else \
            {"events.jsonl", "log.txt", LOCK_FILE} | ({JOB_FILE, PLAN_FILE} if self._engine_job_file() else set())
        foreign = sorted(names - own - temporary)
        if foreign:
            raise InputError(f"The output folder {self.out} holds files AsymSeg did not write: "
                             f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}.",
                             "Choose a new or empty output folder; nothing was changed.")
        if resume:
            self._check_resumable()
        elif names & {LAST, BEST}:
            raise InputError(f"The output folder {self.out} already holds a trained model.",
                             "Continue that run with --resume, or choose a new output folder (nothing was changed).")
        self.sink.attach(self.out)
        for name in temporary | {STOP_FILE}:
            (self.out / name).unlink(missing_ok=True)

    def _engine_job_file(self) -> bool:
        """Whether OUT/job.json is one the engine wrote for this folder (not a user's job file)."""
        try:
            written = json.loads((self.out / JOB_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(written, dict) and written.get("output") == str(self.out)

    def _check_resumable(self) -> None:
        """``--resume`` continues the same job from ``model_last.pt``; anything else is refused."""
        if not (self.out / LAST).is_file():
            raise InputError(f"--resume was given but {self.out / LAST} does not exist.",
                             "Start a new run without --resume (in a new folder), or give the output folder of the "
                             "run to continue; nothing was changed.")
        before = load_job(self.out / JOB_FILE) if (self.out / JOB_FILE).is_file() else None
        if before is not None:
            self.job.apply_plan(before.given())  # a resumed run keeps its plan
        if (self.out / PLAN_FILE).is_file():
            self.plan = json.loads((self.out / PLAN_FILE).read_text(encoding="utf-8"))
        before = before.to_dict() if before is not None else {}
        now = self.job.to_dict()
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            raise InputError(f"--resume: the job differs from the run in {self.out} in {', '.join(changed)}.",
                             "Resume with the same job (only iterations, device and amp may change), or start a "
                             "new run in a new folder; nothing was changed.")

    def _plan(self) -> None:
        """Fill the settings the job leaves out from a plan of its training cases and this device (rank 0 plans,
        every rank uses its plan); ``plan.json``, a ``plan`` event and the log say what was chosen and why."""
        self.plan = distributed.on_main(self.world, lambda: plan_job(self.job, self.device, self.sink),
                                        "Rank 0 could not plan the run")
        self.job.apply_plan(self.plan["settings"])
        if self.world.main:
            write_json(self.out / PLAN_FILE, self.plan)
            self.sink.emit("plan", plan=self.plan)

    def _load_cases(self) -> None:
        job = self.job
        specs = [c for c in job.cases if c.role in ("train", "validation")]
        self.cases: List[LoadedCase] = []
        for i, spec in enumerate(specs, 1):
            self.sink.emit("progress", phase="load", iteration=i, total=len(specs), case=spec.id)
            self.cases.append(load_case(spec, job.class_map, job.normalization, job.spacing))
        self.train_cases = [c for c in self.cases if c.role == "train"]
        self.val_cases = [c for c in self.cases if c.role == "validation"]
        depths = {c.image.shape[1] for c in self.cases}
        self.spatial_dims = 2 if depths == {1} else 3
        if self.spatial_dims == 2 and job.patch_size[0] != 1:
            raise InputError(f"The images are single slices (2D) but patch_size is {job.patch_size}.",
                             f"Use patch_size [1, {job.patch_size[1]}, {job.patch_size[2]}] for 2D images.")

    def _check_validation_labels(self) -> None:
        """Validation DSC is undefined on a case without the structure: refuse a validation that could never
        choose a checkpoint, and say which cases cannot score which class."""
        names = self.job.class_map.names
        rare = [j for j, r in enumerate(self.job.rarity) if r > 0]
        present = {c.id: set(np.unique(c.label).tolist()) for c in self.val_cases}
        if present and not any(j in classes for classes in present.values() for j in rare):
            raise InputError(f"No validation case ({', '.join(present)}) contains a voxel of the rare class(es) "
                             f"{[names[j] for j in rare]}: validation DSC is undefined and could never choose a "
                             "checkpoint.", "Choose validation cases that show the structure, or train without "
                             "validation cases (the last checkpoint is then used).")
        for case_id, classes in present.items():
            missing = [names[j] for j in rare if j not in classes]
            if missing:
                self.sink.warning(f"Validation case {case_id} has no voxel of {', '.join(missing)}: it does not count "
                                  "in that class's validation DSC.", "Expected for a case without that structure.")

    def _meta(self) -> dict:
        job = self.job
        return {"class_names": job.class_map.names, **job.class_map.to_dict(), "rarity": job.rarity,
                "channels": job.channels, "normalization": job.normalization.to_dict(),
                "target_spacing": job.spacing, "network": job.network, "spatial_dims": self.spatial_dims,
                "patch_size": job.patch_size, "technique": job.technique.to_dict(), "loss": job.loss,
                "versions": versions(), "seed": job.seed, "iterations": job.iterations, "plan": self.plan,
                "validation": {**self.curve.to_dict(), "history": self.history}}

    def _build(self, resume: bool) -> int:
        """Network, optimiser, loss and the weights to start from; returns the iteration to start from.

        ``train_model`` is what training steps run through: the network itself, or its DDP wrapper
        under torchrun (made after the weights are loaded).
        """
        self._build_network()
        self.optimizer = OPTIMIZERS[self.job.optimizer](self.model.parameters(), self.job.learning_rate)
        self._build_loss()
        self.scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(self.device, self.job.amp) else None
        start = self._resume() if resume else 0
        if not resume and self.job.initial_checkpoint:
            self._load_initial_checkpoint()
        self.train_model = distributed.data_parallel(self.model, self.world, self.device)
        return start

    def _build_network(self) -> None:
        job = self.job
        self.model = build_network(job.network, len(job.channels), job.class_map.num_classes,
                                   self.spatial_dims).to(self.device)
        if self.device.type == "cuda" and self.spatial_dims == 3:
            self.model = self.model.to(memory_format=torch.channels_last_3d)

    def _build_loss(self) -> None:
        """The technique's objective: the margin/focal core, or one of the paper's baselines."""
        t = self.job.technique
        if t.objective == "soft-fbeta":
            self.loss = TermLoss("fbeta", soft_fbeta_loss, beta=t.beta)
        elif t.objective == "logit-adjusted":
            self.loss = TermLoss("ce", logit_adjusted_ce, class_priors=self._class_counts(), tau=t.tau)
        else:
            ce_weight, dice_weight = LOSSES[self.job.loss]
            rarity = ldam_rarity(self._class_counts()) if t.ldam else self.job.rarity
            self.loss = AsymmetricLoss(rarity, margin=t.margin, gamma=t.gamma, symmetric=t.symmetric,
                                       ce_weight=ce_weight, dice_weight=dice_weight)

    def _class_counts(self) -> List[int]:
        """Voxels of each class over the training cases (LDAM margins, logit-adjustment priors)."""
        names = self.job.class_map.names
        counts = sum(np.bincount(c.label.ravel(), minlength=len(names))[:len(names)] for c in self.train_cases)
        missing = [name for name, n in zip(names, counts) if n == 0]
        if missing:
            raise InputError(f"The training cases have no voxel of {', '.join(missing)}: the "
                             f"{self.job.technique.preset} technique needs every class's frequency.",
                             "Add training cases that show every class, or choose another technique.")
        return [int(n) for n in counts]

    def _resume(self) -> int:
        """Weights, optimiser state, iteration and validation history of ``model_last.pt``."""
        last = self.out / LAST
        state, meta = load_model_file(last)
        load_weights(self.model, state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.model_path = self.out / BEST if (self.out / BEST).exists() else last
        self.history = list((meta.get("validation") or {}).get("history", []))
        start = int(state["iteration"])
        self.sink.log(f"Resuming from {last} at iteration {start}" + (
            f" (best smoothed validation mean DSC so far {ValidationCurve(history=self.history).best_smoothed:.3f})."
            if self.history else "."))
        return start

    def _load_initial_checkpoint(self) -> None:
        """Fine-tune from an AsymSeg model file or a MONAI bundle (bundles.load_initial_model): the same channels and
        network (a job that leaves the network out is planned with the initial model's); a different class count
        resets the output layer."""
        job = self.job
        state_dict, meta = load_initial_model(job.initial_checkpoint)
        if len(meta.get("channels", [])) != len(job.channels):
            raise InputError(f"The initial model {job.initial_checkpoint} takes {len(meta['channels'])} channel(s) "
                             f"{meta['channels']} but the job has {len(job.channels)} {job.channels}.",
                             "Fine-tune with images of the same channels, or start without initial_checkpoint.")
        theirs = (meta.get("spatial_dims"), network_config(meta["network"]))
        ours = (self.spatial_dims, network_config(job.network))
        if theirs != ours:
            raise InputError(f"The initial model {job.initial_checkpoint} is the {theirs[0]}D network {theirs[1]} but "
                             f"the job trains the {ours[0]}D network {ours[1]}.",
                             "Leave network out of the job (fine-tuning then plans the initial model's), set it to the "
                             "initial model's, or start without initial_checkpoint.")
        reset = load_weights(self.model, state_dict)
        if reset:
            self.sink.warning(f"The initial model has {len(meta.get('class_names', []))} classes and this job "
                              f"{job.class_map.num_classes}: the output layer was re-initialised ({', '.join(reset)}).",
                              "Expected when fine-tuning to other classes; everything else is kept.")

    # ---------------------------------------------------------------- one iteration
    def _batch(self, sampler: PatchSampler, rng: np.random.Generator, augment):
        x, y, centred = sampler.sample(self.job.batch_size)
        t = self.job.technique
        if t.augmentation:
            p_bg = t.p_fg if t.symmetric else t.p_bg
            for i in np.flatnonzero(choose_patches_to_augment(centred, t.p_fg, p_bg, rng)):
                out = augment({"image": x[i], "label": y[i][None].astype(np.float32)})
                x[i] = np.asarray(out["image"])
                y[i] = np.asarray(out["label"])[0].round()
        x = torch.from_numpy(x).to(self.device, non_blocking=True)
        y = torch.from_numpy(y).to(self.device, non_blocking=True)
        if self.spatial_dims == 2:
            x, y = x[:, :, 0], y[:, 0]
        elif self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x, y

    def _step(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, gen: torch.Generator):
        """One iteration: the clean batch, the adversarial batch and the mixed batch of the technique.

        ``update`` "sequential" (the official code, METHOD.md §4) takes one optimiser step per
        batch, after computing the adversarial direction with the parameters of the start of the
        iteration; "sum" takes one step on the summed terms. Returns the summed terms and each term.
        """
        t, rare = self.job.technique, self.job.rarity
        batches = [("clean", x, y)]
        if t.adversarial:
            with autocast(self.device, self.amp):
                r_adv = adversarial_perturbation(self.model, x, y, rare, xi=t.xi, l=t.l, symmetric=t.symmetric,
                                                 use_dice=self.loss.dice_weight > 0, generator=gen)
            batches.append(("adversarial", x + r_adv, y))
        if t.mixup:
            lam = sample_mixup_lambda(t.mixup_alpha, rng, margin=t.mixup_margin)
            x_mix, y_i, y_k = mixup_batch(x, y, lam)
            batches.append(("mixup", x_mix, mixup_targets(y_i, y_k, lam, rare, t.mixup_margin, symmetric=t.symmetric)))
        terms: Dict[str, torch.Tensor] = {}
        if t.update == "sum":
            for batch in batches:
                terms.update(self._terms(*batch))
            self._update(terms)
        else:
            for batch in batches:
                part = self._terms(*batch)
                self._update(part)
                terms.update(part)
        terms = {name: value.detach() for name, value in terms.items()}
        return sum(terms.values()), terms

    def _terms(self, name: str, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The loss on one batch: the clean batch reports each loss term, the others one term named after them."""
        with autocast(self.device, self.amp):
            logits = self.train_model(x)
            return self.loss.terms(logits, y) if name == "clean" else {name: self.loss(logits, y)}

    def _update(self, terms: Dict[str, torch.Tensor]) -> None:
        """One optimiser step on the sum of ``terms`` (a NaN/inf term stops the run, naming it)."""
        total = sum(terms.values())
        if distributed.any_rank(self.world, not torch.isfinite(total), self.device):
            bad = [k for k, v in terms.items() if not torch.isfinite(v)] or ["(another rank's)"]
            raise DivergenceError(f"The {', '.join(bad)} loss term(s) became NaN or infinite.",
                                  "Lower the learning rate and check the images' normalisation; "
                                  f"the last model file {self.model_path or '(none yet)'} is kept.")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.optimizer.step()

    # ---------------------------------------------------------------- validation and statistics
    def _logits(self, case: LoadedCase) -> torch.Tensor:
        return predict_logits(self.model, case.image, self.job.patch_size, self.device, self.spatial_dims,
                              amp=self.amp)

    def _validate(self, iteration: int) -> ValidationDecision:
        """Validation metrics at ``iteration`` (a ``validation`` event) and what they mean for the checkpoint choice
        (checkpointing.ValidationCurve: the smoothed mean DSC)."""
        names = self.job.class_map.names
        per_class = {name: {"dsc": [], "sensitivity": [], "precision": []} for name in names[1:]}
        for case in self.val_cases:
            prediction = self._logits(case).argmax(0).numpy()
            result = case_metrics(prediction, case.label, case.spacing, classes=range(1, len(names)))
            for j, name in enumerate(names[1:], 1):
                for key in per_class[name]:
                    per_class[name][key].append(result[j][key])
        metrics = {name: {k: summarize(v)["mean"] for k, v in d.items()} for name, d in per_class.items()}
        crossing = self._crossing_rates(metrics)
        self.model.train()
        dscs = [m["dsc"] for m in metrics.values() if m["dsc"] is not None]
        mean_dsc = float(np.mean(dscs)) if dscs else math.nan
        decision = self.curve.update(iteration, mean_dsc, self.job.iterations)
        self.history.append({"iteration": iteration, "metrics": metrics, "mean_dsc": decision.to_dict()["mean_dsc"],
                             "smoothed_mean_dsc": decision.to_dict()["smoothed"], "crossing": crossing})
        self.sink.emit("validation", iteration=iteration, metrics=metrics, mean_dsc=mean_dsc,
                       smoothed_mean_dsc=decision.smoothed, best=decision.best, crossing=crossing)
        self._overfitting_alarm(iteration, crossing)
        return decision

    def _crossing_rates(self, metrics: Dict[str, dict]) -> Dict[str, dict]:
        """Per rare class, the share of its voxels on the wrong side of the decision boundary (true-class margin < 0,
        i.e. 1 - voxel sensitivity) on the training and on the validation cases."""
        rare = [j for j, r in enumerate(self.job.rarity) if r > 0]
        names = self.job.class_map.names
        missed = {j: [0, 0] for j in rare}  # missed, total voxels over the training cases
        for case in self.train_cases:
            prediction = self._logits(case).argmax(0).numpy()
            for j in rare:
                truth = case.label == j
                missed[j][0] += int((truth & (prediction != j)).sum())
                missed[j][1] += int(truth.sum())
        return {names[j]: {"train": missed[j][0] / missed[j][1] if missed[j][1] else None,
                           "validation": None if metrics[names[j]]["sensitivity"] is None
                           else 1.0 - metrics[names[j]]["sensitivity"]} for j in rare}

    def _overfitting_alarm(self, iteration: int, crossing: Dict[str, dict]) -> None:
        """A ``warning`` the first time a rare class misses CROSSING_ALARM more of its validation voxels than of its
        training voxels: the paper's over-fitting signature, while there is still time to act."""
        for name, rates in crossing.items():
            if name in self.alarmed or rates["train"] is None or rates["validation"] is None:
                continue
            if rates["validation"] - rates["train"] >= CROSSING_ALARM:
                self.alarmed.add(name)
                self.sink.warning(
                    f"Over-fitting of {name} at iteration {iteration}: {rates['validation']:.0%} of its voxels in the "
                    f"validation cases fall on the wrong side of the decision boundary (missed), against "
                    f"{rates['train']:.0%} in the training cases. The network memorises the training cases' "
                    f"{name} and under-segments new ones.",
                    "Use an asymmetric technique (e.g. asymmetric-focal), more training cases or a shorter run; after "
                    "training, calibrate moves the boundary back (infer --calibrated).")

    def _checkpoint(self, kind: str, iteration: int) -> Optional[Path]:
        """Save the model (rank 0 only: the ranks' weights are identical)."""
        if not self.world.main:
            return None
        path = self.out / (BEST if kind == "best" else LAST)
        save_model(path, self.model, self._meta(), self.optimizer, iteration)
        self.model_path = self.out / BEST if (self.out / BEST).exists() else path
        self.sink.emit("checkpoint", kind=kind, path=str(path), iteration=iteration)
        return path

    def _fit_on_validation(self) -> None:
        """Each class's post-processing and the rare classes' logit offsets, chosen on the validation cases and
        stored in both model files. The offsets are reported but off by default (``infer --calibrated``)."""
        names = self.job.class_map.names
        labels = [c.label for c in self.val_cases]
        for path in {self.out / LAST, self.model_path}:
            load_weights(self.model, load_model_file(path)[0]["state_dict"])
            logits = [self._logits(case).numpy() for case in self.val_cases]
            choice = choose_postprocessing([z.argmax(0) for z in logits], labels,
                                           [c.spacing for c in self.val_cases], names)
            calibration = {**fit_offsets(logits, labels, names, self.job.rarity),
                           "cases": [c.id for c in self.val_cases]}
            update_model_meta(path, postprocessing=choice, calibration=calibration)
            self.sink.log(f"Post-processing chosen on the validation cases for {path.name}: "
                          + ", ".join(f"{name} {spec}" for name, spec in choice["classes"].items()))
            self.sink.log(f"Logit offsets fitted on the validation cases for {path.name} (not applied unless infer "
                          f"--calibrated): {describe_offsets(calibration)}")

    def _logit_statistics(self) -> Dict[str, str]:
        """Statistics of the model that ``done`` hands out (the best checkpoint when validation ran)."""
        if self.model_path and self.model_path.name == BEST:
            load_weights(self.model, load_model_file(self.model_path)[0]["state_dict"])
        outputs = {}
        for role, cases in (("train", self.train_cases), ("validation", self.val_cases)):
            if not cases:
                continue
            stats = LogitStatistics(self.job.class_map.names)
            for i, case in enumerate(cases, 1):
                self.sink.emit("progress", phase="logit-statistics", iteration=i, total=len(cases), case=case.id)
                stats.update(self._logits(case), case.label, case.mask,
                             voxel_volume_ml=float(np.prod(case.spacing)) / 1000.0)
            path = self.out / f"logit_statistics_{role}.json"
            stats.save(path)
            outputs[f"logit_statistics_{role}"] = str(path)
        return outputs

    # ---------------------------------------------------------------- the run
    def run(self, resume: bool = False) -> TrainResult:
        """Train the job in its output folder, which stays locked for the run (another run there fails at once)."""
        try:
            # rank 0 owns the output folder; the other ranks learn its verdict
            distributed.on_main(self.world, lambda: self._prepare_output(resume), "Rank 0 refused the run")
            return self._run(resume)
        finally:
            if self.lock is not None:
                self.lock.release()

    def _run(self, resume: bool) -> TrainResult:
        job = self.job
        self.sink.emit("start", command="train", config=job.to_dict(), device=str(self.device), versions=versions(),
                       output=str(self.out), world_size=self.world.size)
        # a resumed run keeps its plan (rank 0 read it from the folder); every rank must agree on what is left to plan
        filled, self.plan = distributed.from_main(self.world, (job.given(), self.plan))
        job.apply_plan(filled)
        if job.unplanned():
            self._plan()
        if self.world.main:
            write_json(self.out / JOB_FILE, job.to_dict())
        seed_everything(job.seed)
        self._load_cases()
        rare_classes = [j for j, r in enumerate(job.rarity) if r > 0]
        sampler = PatchSampler(self.train_cases, job.patch_size, rare_classes, job.foreground_fraction,
                               seed=job.seed + self.world.rank)  # each rank samples its own patches
        if not sampler.has_rare:
            rare_names = [job.class_map.names[j] for j in rare_classes]
            raise InputError(f"None of the training cases contains a voxel of the rare class(es) {rare_names}.",
                             "Check the label maps and the 'classes' mapping of label values, or add cases that "
                             "show the structure.")
        self._check_validation_labels()
        self.history, self.alarmed = [], set()
        start = self._build(resume)
        self.curve = ValidationCurve(history=self.history)
        stop = StopRequest(self.out)
        stop.install()
        try:
            status, iteration = self._loop(sampler, start, stop)
        finally:
            stop.restore()
        if not self.world.main:
            return TrainResult(status, None, iteration, {})
        outputs = {"job": str(self.out / JOB_FILE)}
        if self.history:
            write_json(self.out / VALIDATION_FILE, self.history)
            outputs["validation"] = str(self.out / VALIDATION_FILE)
        if status == "finished" and self.val_cases:
            chosen = self.curve.best_iteration if self.model_path.name == BEST else iteration
            self.sink.emit("checkpoint", kind="chosen", path=str(self.model_path), iteration=chosen,
                           reason=self.curve.choice_sentence(job.iterations, self.model_path.name))
            self._fit_on_validation()
        if status == "finished" and job.logit_statistics:
            outputs.update(self._logit_statistics())
        return TrainResult(status, self.model_path, iteration, outputs)

    def _loop(self, sampler: PatchSampler, start: int, stop: StopRequest):
        job = self.job
        total_its = job.iterations
        # resumed runs continue with a fresh, reproducible random stream; every rank has its own
        seed = job.seed + start + 1_000_003 * self.world.rank
        rng = np.random.default_rng(seed)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        augment = _augmentation(seed) if job.technique.augmentation else None
        self.model.train()
        iteration, last_emit, rate = start, 0.0, None
        while iteration < total_its:
            t0 = time.perf_counter()
            iteration += 1
            lr = learning_rate(job.learning_rate, job.lr_schedule, iteration, total_its)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            try:
                x, y = self._batch(sampler, rng, augment)
                total, terms = self._step(x, y, rng, gen)
            except torch.cuda.OutOfMemoryError as exc:
                raise ResourceError(f"The GPU ran out of memory at iteration {iteration} (batch {job.batch_size}, "
                                    f"patch {job.patch_size}).", "Use a smaller patch_size or batch_size, or another "
                                    f"GPU; the last model file {self.model_path or '(none yet)'} is kept.") from exc
            dt = time.perf_counter() - t0
            rate = dt if rate is None else 0.9 * rate + 0.1 * dt
            now = time.time()
            if iteration in (start + 1, total_its) or now - last_emit >= 0.5 or stop:
                last_emit = now
                self.sink.emit("progress", phase="train", iteration=iteration, total=total_its, loss=total.item(),
                               terms={k: v.item() for k, v in terms.items()}, lr=lr,
                               iterations_per_second=1 / rate, eta_seconds=rate * (total_its - iteration))
            if distributed.any_rank(self.world, bool(stop), self.device):  # every rank stops at this iteration
                self._checkpoint("last", iteration)
                return "cancelled", iteration
            if iteration % job.validation_interval == 0 or iteration == total_its:
                plateau = False
                if self.val_cases and self.world.main:
                    decision = self._validate(iteration)
                    if decision.best:
                        self._checkpoint("best", iteration)
                    plateau = job.early_stopping and decision.plateau
                self._checkpoint("last", iteration)
                if distributed.any_rank(self.world, plateau, self.device):
                    if self.world.main:
                        self.sink.log(f"Early stopping at iteration {iteration} of {total_its}: "
                                      f"{self.curve.stop_sentence()}.")
                    return "finished", iteration
        if start >= total_its:
            self.sink.log(f"Nothing to do: the model already has {start} of {total_its} iterations.")
        return "finished", iteration


