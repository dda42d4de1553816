"""Running the bench's runs as scheduler jobs: SLURM job arrays through submitit (or submitit's local executor).

``bench --executor local`` (the default) runs the runs in the bench process itself. With
``--executor slurm`` every pending (method, fold, seed) run becomes one task of a SLURM job
array submitted through submitit; ``--executor submitit-local`` uses submitit's local executor
(one process per run on this machine: the same code path, for testing and for machines
without SLURM). Each job claims its run folder exactly as a local worker does (claims.py), so a
grid resubmitted while some of its jobs still run, or after some finished, never does a run
twice. The bench process waits for the jobs, then aggregates results.json as a local run does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..errors import InputError
from ..events import EventSink
from .claims import claim, claimed_by_another, release
from .folds import Run
from .runs import run_one, run_record

JOB_FOLDER = "submitit"  # OUT/submitit/: the jobs' pickles, stdout and stderr (submitit's own layout)


def run_in_job(run: Run, settings: dict, device: str, out: Path) -> Optional[dict]:
    """One run inside a scheduler job: claim it, train and evaluate it, release it.

    Returns the run.json record, or None when the run was finished or claimed by another worker.
    """
    sink = EventSink(progress_bar=False)
    try:
        if run_record(run) is not None or not claim(run.folder):
            return None
        try:
            return run_one(run, settings, device, sink, out)
        finally:
            release(run.folder)
    finally:
        sink.close()


def _executor(args, out: Path):
    """The submitit executor of ``--executor`` with the ``--slurm-*`` options."""
    try:
        import submitit
    except ImportError:
        raise InputError(f"--executor {args.executor} needs the submitit package.",
                         'Install it: python -m pip install "AsymSegTrainer[cluster]" (or pip install submitit).') \
            from None
    folder = out / JOB_FOLDER / "%j"
    if args.executor == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=args.slurm_time)
        return executor
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(name="asymseg-bench", timeout_min=args.slurm_time, gpus_per_node=args.slurm_gpus,
                               cpus_per_task=args.slurm_cpus, slurm_array_parallelism=args.slurm_array_parallelism,
                               **({"slurm_partition": args.slurm_partition} if args.slurm_partition else {}))
    return executor


def run_as_jobs(args, runs: Sequence[Run], settings: dict, device: str, out: Path, sink: EventSink,
                progress: Callable[[int, Run, str], None]) -> List[Run]:
    """Submit the pending runs as one job array, wait for every job; returns the runs whose job failed."""
    pending = [r for r in runs if run_record(r) is None and not claimed_by_another(r.folder)]
    if not pending:
        sink.log("Every run is finished or held by a live worker: nothing to submit.")
        return []
    executor = _executor(args, out)
    jobs = executor.map_array(run_in_job, pending, [settings] * len(pending), [device] * len(pending),
                              [out] * len(pending))
    sink.log(f"Submitted {len(jobs)} run(s) to {args.executor} (job {jobs[0].job_id.split('_')[0]}); "
             f"their logs: {out / JOB_FOLDER}. Cancelling this command leaves the jobs running.")
    failed = []
    for run, job in zip(pending, jobs):
        index = runs.index(run) + 1
        try:
            job.result()
        except Exception as exc:  # a job's failure is reported and the others are still collected
            failed.append(run)
            sink.warning(f"{run.name}: its job {job.job_id} failed: {str(exc).strip().splitlines()[-1]}",
                         f"Its log is in {out / JOB_FOLDER}; run the same command again to redo it.")
            continue
        progress(index, run, "done")
    return failed
