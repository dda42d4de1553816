"""Command line: ``python -m AsymSegTrainer {train,infer,evaluate,demo,bench}`` (or ``asymseg ...``).

Every command reports through an :class:`~AsymSegTrainer.events.EventSink`; failures become
an ``error`` event, a ``done`` event with status ``failed`` and the documented exit code
(docs/protocol.md, "Exit codes").
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable, List, Optional

from . import distributed
from .errors import CancelledError, InputError, as_user_error
from .events import EventSink
from .protocol import CHOICES, EXIT_CODES, PRESETS, RECOMMENDED, exit_code_summary, job_default

EPILOG = f"exit codes: {exit_code_summary()}.\nProtocol (job spec, events, outputs): docs/protocol.md."


def _ids(text: str) -> List[str]:
    return [s for s in (text or "").split(",") if s]


def _job(args, needs_out: bool):
    """The job of ``train`` / ``plan``: a job file, or cases of an nnU-Net folder with the options given."""
    from .jobspec import job_from_dataset, job_from_dict, load_job, parse_target_spacing

    if args.job:
        job = load_job(args.job)
        if args.out:
            job.output = Path(args.out).resolve()
        return job
    if needs_out and not args.out:
        raise InputError("train --dataset needs --out, the output folder of the run.",
                         "Add --out FOLDER (a new or empty folder).")
    settings = {"technique": args.preset}
    if args.out:
        settings["output"] = str(Path(args.out).resolve())
    for key in ("iterations", "batch_size", "patch_size", "learning_rate", "device", "seed", "loss",
                "optimizer", "validation_interval", "time_budget_minutes"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.target_spacing is not None:
        settings["target_spacing"] = parse_target_spacing(args.target_spacing)
    if args.early_stopping:
        settings["early_stopping"] = True
    if args.initial_checkpoint:
        settings["initial_checkpoint"] = str(Path(args.initial_checkpoint).resolve())
    spec = job_from_dataset(args.dataset, args.classes, _ids(args.train_cases), _ids(args.val_cases), **settings)
    return job_from_dict(spec, Path.cwd())


def _train(args, sink: EventSink) -> dict:
    from .training import Trainer

    job = _job(args, needs_out=True)
    trainer = Trainer(job, sink)
    sink.failure_fields = lambda: {"model": str(trainer.model_path) if trainer.model_path else None}
    result = trainer.run(resume=args.resume)
    return {"status": result.status, "model": str(result.model) if result.model else None, "outputs": result.outputs}


def _plan(args, sink: EventSink) -> dict:
    from .files import write_json
    from .planning import plan_job
    from .runtime import resolve_device

    job = _job(args, needs_out=False)
    device = resolve_device(job.device)
    sink.emit("start", command="plan", config=job.to_dict(), device=str(device), versions=_versions(),
              output=str(args.plan_out) if args.plan_out else None)
    plan = plan_job(job, device, sink)
    sink.emit("plan", plan=plan)
    outputs = {}
    if args.plan_out:
        outputs["plan"] = str(write_json(Path(args.plan_out), plan))
    return {"status": "finished", "outputs": outputs}


def _versions() -> dict:
    from .runtime import versions

    return versions()


def _infer(args, sink: EventSink) -> dict:
    from .inference import infer_case, infer_dataset

    options = dict(overlap=args.overlap, device=args.device, postprocess=args.postprocess,
                   probabilities=args.probabilities, sink=sink, logit_offsets=args.logit_offset or (),
                   calibrated=args.calibrated)
    if args.dataset:
        outputs = infer_dataset(args.model, args.dataset, _ids(args.cases), args.out_dir, subset=args.subset,
                                **options)
    else:
        outputs = infer_case(args.model, args.images, args.out, label=args.label, mask=args.mask, **options)
    return {"status": "finished", "outputs": outputs}


def _calibrate(args, sink: EventSink) -> dict:
    from .calibration import case_logits, describe, fit_offsets
    from .data import read_nnunet_dataset
    from .inference import check_overlap, load_predictor
    from .jobspec import load_job
    from .network import update_model_meta

    model = Path(args.model).resolve()
    if args.dataset:
        _, specs = read_nnunet_dataset(args.dataset)
        by_id = {spec.id: spec for spec in specs}
        ids = _ids(args.cases)
        missing = [i for i in ids if i not in by_id]
        if not ids or missing:
            raise InputError(f"calibrate --dataset needs --cases with case ids of {args.dataset}"
                             + (f"; not there: {missing}" if missing else "."),
                             f"Name the validation cases, e.g. --cases {','.join(list(by_id)[:2])}.")
        specs = [by_id[i] for i in ids]
    else:
        job_file = model.parent / "job.json"
        if not job_file.is_file():
            raise InputError(f"No job.json beside {model}: the validation cases of its run are unknown.",
                             "Give them with --dataset FOLDER --cases ID,ID.")
        specs = load_job(job_file).cases_with_role("validation")
        if not specs:
            raise InputError(f"The run of {model} had no validation cases.",
                             "Give labelled cases the model was not trained on with --dataset FOLDER --cases ID,ID.")
    predictor = load_predictor(model, args.device)
    sink.emit("start", command="calibrate", config={"model": str(model), "cases": [s.id for s in specs]},
              device=str(predictor.device), versions=_versions(), output=str(model))
    logits, labels = case_logits(predictor, specs, check_overlap(args.overlap), sink)
    record = {**fit_offsets(logits, labels, predictor.class_names, predictor.meta["rarity"]),
              "cases": [s.id for s in specs]}
    update_model_meta(model, calibration=record)
    sink.log(f"Calibrated {model.name}: {describe(record)}. infer --calibrated applies these offsets.")
    return {"status": "finished", "outputs": {"model": str(model)}}


def _rank(args, sink: EventSink) -> dict:
    from .ranking import rank_cases

    outputs = rank_cases(args.model, args.dataset, _ids(args.cases), args.out, subset=args.subset,
                         overlap=args.overlap, device=args.device, sink=sink)
    return {"status": "finished", "outputs": outputs}


def _export(args, sink: EventSink) -> dict:
    from .bundles import export_bundle

    return {"status": "finished", "outputs": export_bundle(args.model, args.out, sink)}


def _evaluate(args, sink: EventSink) -> dict:
    from .evaluation import evaluate_folder

    outputs = evaluate_folder(args.predictions, args.dataset, args.out, classes=args.classes, model=args.model,
                              cases=_ids(args.cases), sink=sink, allow_missing=args.allow_missing,
                              postprocess=args.postprocess)
    return {"status": "finished", "outputs": outputs}


def _demo(args, sink: EventSink) -> dict:
    from .demo import run_demo

    return {"status": "finished", "outputs": run_demo(Path(args.out), sink, iterations=args.iterations)}


def _bench(args, sink: EventSink) -> dict:
    from .bench import run_bench

    return run_bench(args, sink)


def _training_options(p: argparse.ArgumentParser, defaults: Optional[Callable[[str], object]] = None) -> None:
    """Job settings that ``train`` and ``bench`` both take; ``defaults(name)`` fills their help texts."""
    def default(name: str) -> Optional[str]:
        if defaults is None:
            return None
        value = defaults(name)
        if value is None:
            return "default: planned from the training cases and the device (see the plan command)"
        return f"default {' '.join(map(str, value)) if isinstance(value, list) else value}"

    p.add_argument("--batch-size", type=int, help=default("batch_size"))
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help=default("patch_size"))
    p.add_argument("--target-spacing", nargs="+", metavar="MM",
                   help="resample to Z Y X mm, or 'native' for the images' own spacing; " + (
                       default("target_spacing") or "default: the images' own"))
    p.add_argument("--learning-rate", "--lr", type=float, help=default("learning_rate"))
    p.add_argument("--optimizer", choices=CHOICES["optimizer"], help=default("optimizer"))


def _job_options(p: argparse.ArgumentParser) -> None:
    """The job of ``train`` and ``plan``: a job file, or cases of an nnU-Net folder and the settings to keep."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--job", type=Path, help="job spec JSON (docs/protocol.md)")
    src.add_argument("--dataset", type=Path, help="nnU-Net v2 raw folder (dataset.json, imagesTr/, labelsTr/)")
    p.add_argument("--classes", nargs="+", default=[], metavar="NAME=V1,V2",
                   help="with --dataset: training classes as label-value groups; other values are background")
    p.add_argument("--train-cases", default="", metavar="ID,ID", help="with --dataset: training case ids")
    p.add_argument("--val-cases", default="", metavar="ID,ID", help="with --dataset: validation case ids")
    p.add_argument("--preset", default=RECOMMENDED, choices=list(PRESETS),
                   help=f"technique (default {RECOMMENDED}, the paper's first recommendation)")
    p.add_argument("--iterations", type=int, help="default: what fits --minutes on this device (planned)")
    p.add_argument("--minutes", dest="time_budget_minutes", type=float,
                   help=f"time budget the planned iterations fit (default {job_default('time_budget_minutes'):g})")
    _training_options(p, job_default)
    p.add_argument("--loss", choices=list(CHOICES["loss"]), help=f"default {job_default('loss')}")
    p.add_argument("--validation-interval", type=int, help="default: planned (about 12 validations per run)")
    p.add_argument("--early-stopping", action="store_true",
                   help="stop once the smoothed validation DSC has stopped improving (needs --val-cases)")
    p.add_argument("--initial-checkpoint", metavar="MODEL_OR_BUNDLE",
                   help="fine-tune from this AsymSeg model file or MONAI bundle folder (a MONAI UNet, DynUNet or SegResNet, e.g. "
                        "one export wrote); leave the network out to keep its own; other classes re-initialise the "
                        "output layer")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int)


def _sliding_window_options(p: argparse.ArgumentParser) -> None:
    """The options of a command that segments cases with a model: overlap and device."""
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    p.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m AsymSegTrainer", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune a segmentation network on a few cases with the asymmetric techniques of Li, "
                    "Kamnitsas, Glocker (IEEE TMI 2020) so rare structures are not under-segmented on new cases.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str, fn: Callable, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {example}\n\n{EPILOG}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(run=fn)
        p.add_argument("--events", action="store_true",
                       help="stdout: one JSON event per line and nothing else (for Slicer and scripts)")
        return p

    t = command("train", "fine-tune a network (a job file, or cases of an nnU-Net v2 raw folder); settings left out "
                         "are planned from the training cases and the device (see plan)", _train,
                "python -m AsymSegTrainer train --dataset Dataset001 --classes tumor_core=1,3,4 "
                "--train-cases pat5,pat6 --val-cases pat3 --preset asymmetric-focal --out runs/focal")
    _job_options(t)
    t.add_argument("--out", help="output folder (with --job: overrides the job's)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/model_last.pt")

    pl = command("plan", "show the training plan of a job: the settings it leaves out, chosen from the training "
                         "cases and the device, each with its reason", _plan,
                 "python -m AsymSegTrainer plan --dataset Dataset001 --classes tumor_core=1,3,4 "
                 "--train-cases pat5,pat6")
    _job_options(pl)
    pl.add_argument("--out", help=argparse.SUPPRESS)  # the job's output folder: not used by plan
    pl.add_argument("--plan-out", type=Path, metavar="PLAN.json", help="also write the plan to this JSON file")

    i = command("infer", "segment new cases with a trained model", _infer,
                "python -m AsymSegTrainer infer --model runs/focal/model_best.pt --images flair.nii.gz t1c.nii.gz "
                "--out pred.nii.gz")
    i.add_argument("--model", required=True, type=Path, help="model file (model_best.pt / model_last.pt)")
    one = i.add_mutually_exclusive_group(required=True)
    one.add_argument("--images", nargs="+", help="one case: one image per channel, in the model's channel order")
    one.add_argument("--dataset", type=Path, help="many cases: an nnU-Net v2 raw folder")
    i.add_argument("--out", help="with --images: output label map (.nii.gz, .nii, .nrrd, .mha)")
    i.add_argument("--label", help="with --images: ground truth, for metrics and logit statistics per true class")
    i.add_argument("--mask", help="with --images: ROI mask for the logit statistics")
    i.add_argument("--cases", default="", metavar="ID,ID", help="with --dataset: case ids (default: all)")
    i.add_argument("--out-dir", help="with --dataset: output folder")
    i.add_argument("--subset", choices=["Tr", "Ts"], default="Tr",
                   help="with --dataset: imagesTr (default; ground truth from labelsTr) or imagesTs (labelsTs optional)")
    i.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    i.add_argument("--postprocess", metavar="SPEC",
                   help="post-processing of every class: none, largest (largest connected component only) or "
                        "min-size=V (remove components smaller than V mm³); default: the one the model chose on its "
                        "validation cases, none when it has none")
    i.add_argument("--largest-component", dest="postprocess", action="store_const", const="largest",
                   help="the same as --postprocess largest (kept for older scripts)")
    i.add_argument("--probabilities", action="store_true",
                   help="also write softmax probabilities and margin maps (each class's logit minus the largest "
                        "other one: near 0 where the model hesitates)")
    i.add_argument("--logit-offset", action="append", metavar="NAME=VALUE",
                   help="add VALUE to class NAME's logit before the arg-max (repeatable; > 0 grows the class, "
                        "-100 empties it)")
    i.add_argument("--calibrated", action="store_true",
                   help="apply the offsets that calibrate (or training, on its validation cases) stored in the model; "
                        "--logit-offset overrides them class by class")
    i.add_argument("--device", default="auto")

    c = command("calibrate", "fit one logit offset per rare class on validation cases and store it in the model "
                             "(post-hoc logit adjustment; infer --calibrated applies it)", _calibrate,
                "python -m AsymSegTrainer calibrate --model runs/focal/model_best.pt")
    c.add_argument("--model", required=True, type=Path, help="model file; it gets the offsets")
    c.add_argument("--dataset", type=Path, help="nnU-Net v2 raw folder of the validation cases (default: the "
                                                "validation cases of the model's run, from job.json beside it)")
    c.add_argument("--cases", default="", metavar="ID,ID", help="with --dataset: the validation case ids")
    _sliding_window_options(c)

    r = command("rank", "rank unlabelled cases by how much the model hesitates about the rare classes: the case to "
                        "annotate next comes first", _rank,
                "python -m AsymSegTrainer rank --model runs/focal/model_best.pt --dataset Dataset001 --out ranking.json")
    r.add_argument("--model", required=True, type=Path, help="model file (model_best.pt / model_last.pt)")
    r.add_argument("--dataset", required=True, type=Path, help="nnU-Net v2 raw folder of the cases")
    r.add_argument("--subset", choices=["Ts", "Tr"], default="Ts",
                   help="imagesTs (default: new cases) or imagesTr; labels are never read")
    r.add_argument("--cases", default="", metavar="ID,ID", help="case ids (default: every case of the subset)")
    r.add_argument("--out", required=True, type=Path, metavar="FILE.json",
                   help="the ranked cases with their score, predicted and hesitant rare-class volumes (mL)")
    _sliding_window_options(r)

    x = command("export", "write a model as a MONAI bundle (network_def, pre-processing, inferer, weights) that "
                          "MONAI loads as it is", _export,
                "python -m AsymSegTrainer export --model runs/focal/model_best.pt --format monai-bundle --out bundle/")
    x.add_argument("--model", required=True, type=Path, help="model file (model_best.pt / model_last.pt)")
    x.add_argument("--format", choices=["monai-bundle"], default="monai-bundle", help="monai-bundle (the default)")
    x.add_argument("--out", required=True, type=Path, metavar="DIR", help="bundle folder: new or empty")

    e = command("evaluate", "metrics of predicted label maps against ground truth", _evaluate,
                "python -m AsymSegTrainer evaluate --predictions preds/ --dataset Dataset001 "
                "--classes tumor_core=1,3,4 --out eval/")
    e.add_argument("--predictions", required=True, type=Path, help="folder of <case>.nii.gz label maps of class indices")
    e.add_argument("--dataset", required=True, type=Path, help="nnU-Net v2 raw folder with labelsTr/")
    e.add_argument("--classes", nargs="+", metavar="NAME=V1,V2", help="class map of the ground truth")
    e.add_argument("--model", type=Path, help="take the class map from this model file instead")
    e.add_argument("--cases", default="", metavar="ID,ID", help="case ids (default: every case of the dataset)")
    e.add_argument("--allow-missing", action="store_true",
                   help="evaluate only the cases that have a prediction (a warning names the others); "
                        "without it a missing prediction is an error")
    e.add_argument("--postprocess", metavar="SPEC",
                   help="post-processing of the 'chosen' variant for every class: none, largest or min-size=V (mm³); "
                        "default: the one --model chose on its validation cases, else none")
    e.add_argument("--out", required=True, type=Path, help="folder for metrics.json and metrics.md")

    d = command("demo", "generate phantoms, fine-tune vanilla and asymmetric-focal, compare (under 2 min on 2 cores)",
                _demo, "python -m AsymSegTrainer demo --out asymseg-demo")
    d.add_argument("--out", default="asymseg-demo", help="output folder (default ./asymseg-demo)")
    d.add_argument("--iterations", type=int, help="training iterations per run (default: the demo's)")

    b = command("bench", "reproduce the paper's protocol: folds x seeds x methods on an nnU-Net folder", _bench,
                "python -m AsymSegTrainer bench --dataset Dataset001 --classes tumor_core=1,3,4 --train-size 2 "
                "--folds 3 --seeds 1 --methods vanilla,asymmetric-focal --iterations 500 --out bench/")
    b.add_argument("--dataset", required=True, type=Path)
    b.add_argument("--classes", nargs="+", required=True, metavar="NAME=V1,V2")
    b.add_argument("--train-size", type=int, required=True, help="training cases per fold (K)")
    b.add_argument("--folds", type=int, required=True)
    b.add_argument("--seeds", type=int, default=1)
    b.add_argument("--methods", required=True,
                   help="comma-separated preset names; PRESET+setting=value[+...] is a variant, e.g. "
                        "asymmetric-combination+update=sum")
    b.add_argument("--iterations", type=int, required=True)
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--quick", action="store_true", help="a smoke run in a few minutes")
    b.add_argument("--official", action="store_true",
                   help="the official code's training as closely as this machine allows: rmsprop-official, lr 1e-3 "
                        "halved on the official schedule, batch 10, patch 40^3 (report.md says what differs)")
    _training_options(b)
    b.add_argument("--network", type=json.loads, metavar="JSON",
                   help='network settings as in the job spec, e.g. \'{"name": "unet", "channels": [8, 16, 32], '
                        '"strides": [2, 2]}\'')
    b.add_argument("--overlap", type=float, help="sliding-window overlap of inference (default 0.5)")
    b.add_argument("--device", default="auto")
    b.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local",
                   help="local (default): the runs in this process; slurm: one SLURM job array task per run, "
                        "through submitit; submitit-local: the same through submitit's local executor")
    b.add_argument("--slurm-partition", help="with --executor slurm: the partition")
    b.add_argument("--slurm-gpus", type=int, default=1, help="with --executor slurm: GPUs per run (default 1)")
    b.add_argument("--slurm-cpus", type=int, default=4, help="with --executor slurm: CPU cores per run (default 4)")
    b.add_argument("--slurm-time", type=int, default=240, metavar="MINUTES",
                   help="time limit of one run's job in minutes (default 240)")
    b.add_argument("--slurm-array-parallelism", type=int, default=16,
                   help="with --executor slurm: runs at once (default 16)")
    return parser


def _cancel(signum, frame) -> None:
    raise CancelledError(f"Cancelled by signal {signal.Signals(signum).name}.", "Nothing more was written.")


def _check_utf8(argv: List[str]) -> None:
    """Paths reach SimpleITK's C++ as UTF-8: a name with bytes that are not UTF-8 would abort there."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"The argument {arg!r} contains bytes that are not valid UTF-8.",
                             "Rename the file or folder with plain UTF-8 characters.") from None


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    world = distributed.world_from_environment()
    sink = EventSink(json_stdout=args.events, rank=world.rank)
    previous = {sig: signal.signal(sig, _cancel) for sig in (signal.SIGTERM, signal.SIGINT)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        _check_utf8(argv)
        result = args.run(args, sink)
        code = EXIT_CODES["cancelled" if result["status"] == "cancelled" else "finished"]
        sink.emit("done", exit_code=code, **{"model": None, **result})
    except CancelledError as exc:
        code = exc.exit_code
        sink.warning(exc.message, exc.hint)
        sink.emit("done", status="cancelled", exit_code=code, **{"model": None, **sink.failure_fields()}, outputs={})
    except Exception as exc:  # every failure ends in an error event, a done event and a documented code
        error = as_user_error(exc)
        if error is not None:
            code, kind, message, hint = error.exit_code, error.kind, error.message, error.hint
        else:
            code, kind, message = EXIT_CODES["internal"], "internal", f"{type(exc).__name__}: {exc}"
            hint = "This is a bug in AsymSeg: please report it with the log (OUT/log.txt)."
            sink.log(traceback.format_exc())
        sink.emit("error", kind=kind, message=message, hint=hint)
        sink.emit("done", status="failed", exit_code=code, **{"model": None, **sink.failure_fields()}, outputs={})
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sink.close()
        distributed.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
