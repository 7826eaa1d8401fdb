"""The slurm backend: one submitit job array over the unfinished runs (submitit is an optional extra,
imported when this backend is used)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from risbench.errors import RisbenchError
from risbench.runner.backends import execute_run, is_done, nproc_of


def _slurm_job(run_dir: str) -> dict[str, Any]:
    """What one array task runs: set up torch.distributed's env when the task is one of several, then run."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return execute_run(Path(run_dir), quiet=env.global_rank != 0)


def require_submitit() -> Any:
    """The submitit module; without it a RisbenchError that names the extra to install."""
    try:
        import submitit
    except ImportError:
        raise RisbenchError(
            "--backend slurm needs submitit, which is not installed: pip install 'risbench[slurm]' "
            "(or pip install submitit)"
        ) from None
    return submitit


def run_slurm(
    run_dirs: list[Path],
    folder: Path,
    executor: str = "slurm",
    nproc: int | None = None,
    timeout_min: int = 24 * 60,
    partition: str | None = None,
    parallelism: int = 64,
    wait: bool = False,
    job_fn: Any = None,
) -> list[Any]:
    """Submit the unfinished runs as one job array through submitit (an optional extra).

    executor: 'slurm' (a cluster), 'local' (submitit's LocalExecutor: subprocesses on this machine) or
    'debug' (DebugExecutor: in this process). With `wait`, blocks until every job ends and raises on a
    failed one. `job_fn(run_dir: str)` replaces what each task runs (tests). Returns the jobs."""
    submitit = require_submitit()
    todo = [d for d in run_dirs if not is_done(d)]
    if not todo:
        return []
    folder = Path(folder) / "%j"
    k = nproc or max(nproc_of(d) for d in todo)
    if executor == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {
            "timeout_min": timeout_min,
            "nodes": 1,
            "gpus_per_node": k,
            "tasks_per_node": k,
            "cpus_per_task": 8,
            "slurm_array_parallelism": parallelism,
            "name": "risbench",
        }
        if partition:
            params["slurm_partition"] = partition
        ex.update_parameters(**params)
    elif executor == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=timeout_min)
    elif executor == "debug":
        ex = submitit.DebugExecutor(folder=folder)
    else:
        raise RisbenchError(f"--executor: unknown submitit executor '{executor}'; known: slurm, local, debug")
    jobs = ex.map_array(job_fn or _slurm_job, [str(d) for d in todo])
    if wait:
        errors = []
        for job, run_dir in zip(jobs, todo, strict=True):
            try:
                job.result()
            except Exception as exc:  # report every failed task, not only the first
                errors.append(f"{run_dir.name}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}")
        if errors:
            raise RuntimeError("slurm jobs failed: " + "; ".join(errors))
    return jobs
