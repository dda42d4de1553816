"""Fake engine: speaks docs/protocol.md on stdout so the module's process control can be tested
without torch. Behaviour comes from the job's ``fake`` object (train, plan):

    mode   "ok" (default) | "error" | "stubborn" (ignores SIGTERM and STOP, has a child) |
           "noise" (non-JSON lines on stdout, logs on stderr) | "crash" (dies without a done event)
    iterations, sleep   training iterations and seconds per iteration
    children            number of sleeping child processes to spawn (tree kill)
    plan_sleep          seconds ``plan`` takes before its plan event (cancel while planning)

``infer`` reads the model's classes from the ``job.json`` beside it and reports them in its
``start`` config, with the job's ``fake.calibration`` as the model's ``calibration``;
``infer --probabilities`` writes ``<stem>_probabilities.nii.gz`` (``probability_image``).

``rank`` scores the cases of ``--dataset``'s ``images<subset>`` with the engine's measure on the logits of
``probability_image`` and writes ``--out`` in the engine's ranking format (``rank`` below); the model's
``job.json`` gives the classes, the rarity and ``fake.rank_sleep`` (seconds per case, to cancel it).

``plan`` (and ``train`` before it trains) emits a ``plan`` event as the engine's planning.py
does: every planned field the job leaves out gets a value and a reason (source ``plan``), a
field the job sets is kept (source ``user``); the planned spacing is the first training
image's own, read from the exported file (1 mm for a job without images).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

stop = {"requested": False}


def emit(type_, **fields):
    sys.stdout.write(json.dumps({"type": type_, "time": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def option(args, name, default=None):
    return args[args.index(name) + 1] if name in args else default


def values(args, name):
    if name not in args:
        return []
    out = []
    for item in args[args.index(name) + 1:]:
        if item.startswith("--"):
            break
        out.append(item)
    return out


UNSEEN_SHIFT = 11.0  # the rare classes' own logit on unseen cases: margins N(1, sqrt 2), about 24% below 0


def _record(names, channels, edges, samples):
    """The histograms and moments of AsymSegTrainer.logits' to_dict() for samples[g][c] (values of class g)."""
    import numpy as np

    fields = {"histogram": [], "underflow": [], "overflow": [], "mean": [], "m2": [], "min": [], "max": []}
    for per_channel in samples:
        rows = {key: [] for key in fields}
        for values in per_channel:
            rows["histogram"].append(np.histogram(values, edges)[0].tolist())
            rows["underflow"].append(int((values < edges[0]).sum()))
            rows["overflow"].append(int((values > edges[-1]).sum()))
            rows["mean"].append(float(values.mean()))
            rows["m2"].append(float(((values - values.mean()) ** 2).sum()))
            rows["min"].append(float(values.min()))
            rows["max"].append(float(values.max()))
        for key in fields:
            fields[key].append(rows[key])
    return {"format": "asymseg-logit-statistics", "version": 1, "class_names": names, "channel_names": channels,
            "bin_edges": edges.tolist(), "count": [len(per_channel[0]) for per_channel in samples], **fields}


def logit_record(class_names, shift):
    """A record in the format of AsymSegTrainer.logits (LogitStatistics.to_dict), from Gaussian logits: the
    histograms of every logit channel per class, the true-class margins and the volumes (1 mm voxels).
    ``shift`` moves the rare classes' own logit towards the boundary."""
    import numpy as np

    rng = np.random.default_rng(0)
    edges = np.linspace(-20.0, 20.0, 161)
    logits = []  # per class g: (channels, voxels)
    for gi in range(len(class_names)):
        centres = [(6.0 if gi == ci else -6.0) - (shift if gi > 0 and gi == ci else 0.0)
                   for ci in range(len(class_names))]
        logits.append(np.stack([rng.normal(c, 1.0, 400) for c in centres]))
    margins = [z[gi] - np.delete(z, gi, axis=0).max(axis=0) for gi, z in enumerate(logits)]
    record = _record(class_names, class_names, edges, [list(z) for z in logits])
    missed = [float((m < 0).sum()) / 1000 for m in margins]
    return {**record, "margins": _record(class_names, ["margin"], edges, [[m] for m in margins]),
            "volume_ml": [len(m) / 1000 for m in margins], "missed_volume_ml": missed}


def probability_image(array, classes, reference):
    """Softmax of logits z_0 = 0, z_1 = 4 (x - 1.5), z_k = -4 (k > 1): its argmax is the fake prediction
    (x > 1.5), and class 1 hesitates near the threshold. A vector image on the reference's grid."""
    import numpy as np
    import SimpleITK as sitk

    logits = np.full(array.shape + (classes,), -4.0)
    logits[..., 0] = 0.0
    logits[..., 1] = 4.0 * (array - 1.5)
    logits -= logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    image = sitk.GetImageFromArray(probabilities.astype(np.float32), isVector=True)
    image.CopyInformation(reference)
    return image


def spawn_children(count, stubborn):
    code = "import signal, time\n" + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if stubborn else "") + \
           "time.sleep(300)\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


PLANNED = {"patch_size": ([32, 32, 32], "the fake device trains 32 voxels a side in reasonable time"),
           "batch_size": (8, "about 262,144 voxels per batch on this device"),
           "network": ({"name": "unet"}, "a CPU: MONAI UNet with the default widths"),
           "normalization": ({"mode": "zscore", "statistics": "foreground"}, "MR-like: z-score per channel"),
           "learning_rate": (0.001, "adam from scratch, decayed over the run")}
STEP_SECONDS = 0.5


def make_plan(job, job_dir):
    """The plan of ``job`` as the engine would report it, with a fixed step time."""
    settings, reasons, source = {}, {}, {}

    def choose(name, value, reason):
        if job.get(name) is not None:
            settings[name], reasons[name], source[name] = job[name], "set in the job", "user"
        else:
            settings[name], reasons[name], source[name] = value, reason, "plan"

    images = [c["images"][0] for c in job["cases"] if c.get("role", "train") == "train" and c["images"]]
    if images:
        import SimpleITK as sitk

        native = list(reversed(sitk.ReadImage(str(job_dir / images[0])).GetSpacing()))
    else:
        native = [1.0, 1.0, 1.0]
    choose("target_spacing", [round(s, 3) for s in native], "the images' own spacing gives a patch enough context")
    for name, (value, reason) in PLANNED.items():
        choose(name, value, reason)
    budget = float(job.get("time_budget_minutes", 15.0))
    choose("iterations", int(0.8 * budget * 60 / STEP_SECONDS),
           f"80% of the {budget:g}-minute budget at {STEP_SECONDS:.2f} s per iteration measured on this device")
    choose("validation_interval", max(10, settings["iterations"] // 12), "about 12 validations per run")
    return {"format": "asymseg-plan", "version": 1, "settings": settings, "reasons": reasons, "source": source,
            "fingerprint": {"cases": len(job["cases"]), "median_spacing": native},
            "device": {"type": "cpu", "name": "fake CPU", "cores": 2, "memory_gib": None},
            "step_seconds": STEP_SECONDS,
            "estimated_minutes": round(settings["iterations"] * STEP_SECONDS / 60 / 0.8, 1),
            "time_budget_minutes": budget}


def plan(args):
    job_path = Path(option(args, "--job"))
    job = json.loads(job_path.read_text())
    fake = job.get("fake", {})
    emit("start", command="plan", config=job, device="cpu", versions={"asymseg": "fake"}, output="")
    if fake.get("mode") == "error":
        emit("error", kind="input", message="Case 000: the mask's geometry differs from its first image.",
             hint="Resample the mask onto the image.")
        emit("done", status="failed", exit_code=3, model=None, outputs={})
        return 3
    signal.signal(signal.SIGTERM, lambda *a: stop.update(requested=True))
    emit("progress", phase="plan", iteration=0, total=1)
    deadline = time.time() + float(fake.get("plan_sleep", 0.0))
    while time.time() < deadline and not stop["requested"]:
        time.sleep(0.02)
    if stop["requested"]:
        print("fake plan cancelled", file=sys.stderr, flush=True)
        emit("done", status="cancelled", exit_code=10, model=None, outputs={})
        return 10
    emit("progress", phase="plan", iteration=1, total=1)
    emit("plan", plan=make_plan(job, job_path.parent))
    emit("done", status="finished", exit_code=0, model=None, outputs={})
    return 0


def train(args):
    job_path = Path(option(args, "--job"))
    job = json.loads(job_path.read_text())
    fake = job.get("fake", {})
    mode = fake.get("mode", "ok")
    out = (job_path.parent / job.get("output", "out")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "STOP").unlink(missing_ok=True)
    (out / "job.json").write_text(json.dumps(job))  # the engine writes the resolved job beside its models
    children = spawn_children(int(fake.get("children", 0)), mode == "stubborn")
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: stop.update(requested=True))
    print("fake engine starting", file=sys.stderr, flush=True)
    emit("start", command="train", config=job, device="cpu", versions={"asymseg": "fake"}, output=str(out))
    if mode == "error":
        emit("error", kind="input", message="Case 001: the label's geometry differs from its first image.",
             hint="Resample the label onto the image.")
        emit("done", status="failed", exit_code=3, model=None, outputs={})
        return 3
    if mode == "crash":
        emit("progress", phase="load", iteration=1, total=1, case="x")
        os._exit(1)
    cases = job.get("cases", [])
    emit("plan", plan=make_plan(job, job_path.parent))
    for i, case in enumerate(cases, start=1):
        emit("progress", phase="load", iteration=i, total=len(cases), case=case["id"])
    total = int(fake.get("iterations", job.get("iterations") or 3))
    for it in range(1, total + 1):
        time.sleep(float(fake.get("sleep", 0.01)))
        if mode == "noise":
            print(f"noise line {it} that is not JSON", flush=True)
            print(f"stderr log {it}", file=sys.stderr, flush=True)
        emit("progress", phase="train", iteration=it, total=total, loss=1.0 / it, terms={"ce": 1.0 / it},
             lr=0.001, iterations_per_second=10.0, eta_seconds=(total - it) * 0.1)
        if mode != "stubborn" and (stop["requested"] or (out / "STOP").exists()):
            (out / "model_last.pt").write_bytes(b"fake")
            emit("checkpoint", kind="last", path=str(out / "model_last.pt"), iteration=it)
            emit("done", status="cancelled", exit_code=10, model=str(out / "model_last.pt"), outputs={})
            for child in children:
                child.kill()
            return 10
    (out / "model_last.pt").write_bytes(b"fake")
    emit("checkpoint", kind="last", path=str(out / "model_last.pt"), iteration=total)
    emit("validation", iteration=total, metrics={"tumor": {"dsc": 0.5, "sensitivity": 0.4, "precision": 0.7}},
         mean_dsc=0.5, best=True)
    outputs = {}
    if fake.get("statistics"):
        names = list(job.get("classes") or {})
        for role, shift in (("train", 0.0), ("validation", UNSEEN_SHIFT)):
            path = out / f"logit_statistics_{role}.json"
            path.write_text(json.dumps(logit_record(names, shift)))
            outputs[f"logit_statistics_{role}"] = str(path)
    emit("done", status="finished", exit_code=0, model=str(out / "model_last.pt"), outputs=outputs)
    return 0


def infer(args):
    import numpy as np
    import SimpleITK as sitk

    images = values(args, "--images")
    out = Path(option(args, "--out"))
    model = Path(option(args, "--model"))
    job_path = model.parent / "job.json"
    job = json.loads(job_path.read_text()) if job_path.is_file() else {}
    names = list(job.get("classes") or {})
    config = {"class_names": names} if names else {}
    if "calibration" in job.get("fake", {}):  # the model meta's calibration, as the engine reports it
        config["calibration"] = job["fake"]["calibration"]
    emit("start", command="infer", config=config, device="cpu", versions={"asymseg": "fake"}, output=str(out.parent))
    image = sitk.ReadImage(images[0])
    array = sitk.GetArrayFromImage(image)
    prediction = sitk.GetImageFromArray((array > 1.5).astype(np.uint8))
    prediction.CopyInformation(image)
    emit("progress", phase="infer", iteration=1, total=1, case="input")
    stem = out.name.split(".")[0]
    outputs = {}
    if "--probabilities" in args:
        path = out.with_name(f"{stem}_probabilities.nii.gz")
        sitk.WriteImage(probability_image(array, max(len(names), 2), image), str(path), True)
        outputs["probabilities"] = str(path)
    sitk.WriteImage(prediction, str(out), True)
    outputs["prediction"] = str(out)
    if option(args, "--label"):
        metrics = out.with_name(f"{stem}_metrics.json")
        metrics.write_text(json.dumps({"raw": {"1": {"dsc": 0.9, "sensitivity": 0.8, "precision": 1.0, "hd95": 1.0}},
                                       "largest_component": {"1": {"dsc": 0.95, "sensitivity": 0.9,
                                                                   "precision": 1.0, "hd95": 0.0}}}))
        outputs["metrics"] = str(metrics)
    if names:
        logits = out.with_name(f"{stem}_logits.json")
        logits.write_text(json.dumps({**logit_record(names, UNSEEN_SHIFT), "grouped_by": "reference"}))
        outputs["logits"] = str(logits)
    emit("done", status="finished", exit_code=0, model=None, outputs=outputs)
    return 0


BAND = 2.0  # AsymSegTrainer/ranking.py


def case_ids(folder, ending):
    """The case ids of an nnU-Net images folder (``<case>_<XXXX><ending>``)."""
    import re

    pattern = re.compile(r"(.+)_\d{4}" + re.escape(ending) + "$")
    return sorted({m.group(1) for p in folder.iterdir() if (m := pattern.match(p.name))})


def volumes(predicted, hesitant, candidate, voxel_ml):
    return {"score": hesitant / candidate if candidate else 0.0, "predicted_ml": predicted * voxel_ml,
            "hesitant_ml": hesitant * voxel_ml, "candidate_ml": candidate * voxel_ml}


def rank(args):
    """The engine's measure, V(|m| < 2) / V(m > -2) over the rare classes, on the fake's logits (probability_image):
    class 1's margin is 4 (x - 1.5), every other class's is -4 or lower; the output is the engine's ranking file."""
    import numpy as np
    import SimpleITK as sitk

    model, dataset, out = Path(option(args, "--model")), Path(option(args, "--dataset")), Path(option(args, "--out"))
    subset = option(args, "--subset", "Ts")
    job_path = model.parent / "job.json"
    job = json.loads(job_path.read_text()) if job_path.is_file() else {}
    names = list(job.get("classes") or {})
    rarity = job.get("rarity") or {}
    rare = [n for i, n in enumerate(names) if rarity.get(n, 1.0 if i else 0.0) > 0]
    ending = json.loads((dataset / "dataset.json").read_text())["file_ending"]
    images = dataset / f"images{subset}"
    ids = case_ids(images, ending)
    signal.signal(signal.SIGTERM, lambda *a: stop.update(requested=True))
    emit("start", command="rank", config={"model": str(model), "dataset": str(dataset), "subset": subset, "cases": ids,
                                          "out": str(out), "band": BAND, "overlap": 0.5, "rare_classes": rare},
         device="cpu", versions={"asymseg": "fake"}, output=str(out))
    if not rare:
        emit("error", kind="input", message=f"The model {model} marks no class as rare: there is nothing to rank by.",
             hint="Use a model trained with at least one rare class (rarity > 0).")
        emit("done", status="failed", exit_code=3, model=None, outputs={})
        return 3
    scored = []
    for i, case in enumerate(ids, 1):
        emit("progress", phase="rank", iteration=i, total=len(ids), case=case)
        time.sleep(float(job.get("fake", {}).get("rank_sleep", 0.0)))
        if stop["requested"]:
            emit("done", status="cancelled", exit_code=10, model=None, outputs={})
            return 10
        image = sitk.ReadImage(str(images / f"{case}_0000{ending}"))
        x = sitk.GetArrayFromImage(image).astype(np.float64)
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        margin = 4.0 * (x - 1.5)
        counts = {name: [int((margin > 0).sum()), int((np.abs(margin) < BAND).sum()), int((margin > -BAND).sum())]
                  if names.index(name) == 1 else [0, 0, 0] for name in rare}
        pooled = [sum(v[k] for v in counts.values()) for k in range(3)]
        scored.append({"case": case, **volumes(*pooled, voxel_ml),
                       "classes": {name: volumes(*v, voxel_ml) for name, v in counts.items()}})
    scored.sort(key=lambda c: (-c["score"], -c["hesitant_ml"], c["case"]))
    out.write_text(json.dumps({"format": "asymseg-ranking", "version": 1, "model": str(model), "dataset": str(dataset),
                               "subset": subset, "measure": "hesitant / candidate volume of the rare classes",
                               "band": BAND, "rare_classes": rare,
                               "cases": [{"rank": r, **c} for r, c in enumerate(scored, 1)]}))
    emit("done", status="finished", exit_code=0, model=None, outputs={"ranking": str(out)})
    return 0


def main():
    args = sys.argv[1:]
    if args and args[0] == "train":
        return train(args)
    if args and args[0] == "infer":
        return infer(args)
    if args and args[0] == "plan":
        return plan(args)
    if args and args[0] == "rank":
        return rank(args)
    print("usage: fake engine {train,plan,infer,rank}", file=sys.stderr)
    return 2


sys.exit(main())
