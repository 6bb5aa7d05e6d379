"""Batch scoring on a Dask distributed cluster (``medidiff score --cluster``).

The client (the ``medidiff score`` process) discovers scans, skips finished ones and
submits one task per remaining scan. A worker builds the scorer once (cached per
worker process), reads the scan itself from the shared path and runs the same
:meth:`~medidiff.batch.job.ScanJob.run` as a local run: outputs are written
atomically and result.json last, so a scan is either complete or absent. Every scan
uses the configured seed, so the result does not depend on which worker scored it.

Faults: a worker that dies mid-scan makes the scheduler re-run that scan on another
worker (Dask's ``allowed-failures``, default 3); a scan whose workers die every time
becomes a ``failed`` row written by the client. A killed client is resumed by running
the same command again (finished scans are skipped, as in a local run).

``distributed`` is imported only here, and only when ``--cluster`` is used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from ..io.naming import safe_join
from ..score.result import RESULT_FILE, ScanRecord
from .job import ScanJob, new_record, remove_stale_temps
from .output import OutputError
from .scorer import calibration_fingerprint, load_scorer

INSTALL_HINT = "pip install 'medidiff[cluster]'"
TASK_RETRIES = 2  # for errors raised by a task itself (e.g. the model not readable on one worker)


class ClusterUnavailable(ValueError):
    """--cluster cannot be used: bad value, missing extra, unreachable scheduler."""


@dataclass(frozen=True)
class ClusterSpec:
    kind: str  # "local" | "address" | "scheduler_file"
    target: str  # the --cluster text
    n_workers: int = 0  # local only


def import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ClusterUnavailable(f"--cluster needs Dask distributed, which is not installed ({exc}); "
                                 f"install it with: {INSTALL_HINT}") from exc
    return distributed


def parse_cluster(text: str) -> ClusterSpec:
    """``local`` / ``local:N`` / ``tcp://HOST:PORT`` (any Dask address) / a scheduler JSON file."""
    import_distributed()
    text = text.strip()
    if text == "local" or text.startswith("local:"):
        n_text = text.partition(":")[2] or str(os.cpu_count() or 1)
        if not n_text.isdigit() or int(n_text) < 1:
            raise ClusterUnavailable(f"--cluster {text!r}: N in local:N must be a whole number >= 1")
        return ClusterSpec("local", text, int(n_text))
    if "://" in text:
        return ClusterSpec("address", text)
    if text.endswith(".json"):
        if not Path(text).is_file():
            raise ClusterUnavailable(f"--cluster {text}: scheduler file not found; start the scheduler with "
                                     "`dask scheduler --scheduler-file FILE` on a shared path")
        return ClusterSpec("scheduler_file", text)
    raise ClusterUnavailable(f"--cluster {text!r}: use local, local:N, a scheduler address such as "
                             "tcp://HOST:8786, or a scheduler file (.json)")


def local_torch_threads(n_workers: int) -> int:
    """Each of N single-task workers on this machine gets cores/N intra-op threads (MEDIDIFF_THREADS wins)."""
    return int(os.environ.get("MEDIDIFF_THREADS", 0) or 0) or max(1, (os.cpu_count() or 1) // n_workers)


@contextlib.contextmanager
def connect(spec: ClusterSpec) -> Iterator[Any]:
    distributed = import_distributed()
    if spec.kind == "local":
        # One task at a time per worker process: the network already uses the cores via torch threads.
        with distributed.LocalCluster(n_workers=spec.n_workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, \
                distributed.Client(cluster) as client:
            yield client
        return
    kwargs = {"scheduler_file": spec.target} if spec.kind == "scheduler_file" else {"address": spec.target}
    try:
        client = distributed.Client(**kwargs)  # timeout: Dask's distributed.comm.timeouts.connect (30 s)
    except (OSError, TimeoutError) as exc:
        raise ClusterUnavailable(f"--cluster {spec.target}: cannot reach the Dask scheduler ({exc}); start it with "
                                 "`dask scheduler` and check the address and firewall") from exc
    with client:
        yield client


# ----------------------------------------------------------------------------- worker side

@dataclass(frozen=True)
class RemoteJob:
    """What a worker needs to score scans of this run (picklable: paths, hashes and flags only).
    The worker rebuilds the scorer from ``scorer_args`` once and keeps it."""

    out: Path
    run_info: dict[str, Any]
    modality: str
    scorer_args: tuple  # (model_dir, config_path, overrides, device kind), absolute paths
    overwrite: bool = False
    dicom_outputs: bool = True
    write_reconstruction: bool = False
    # load_scorer keywords: the client's resolved precision (a worker never resolves its own: the
    # same precision everywhere, or a clear error) and --use-mismatched-calibration
    scorer_options: dict[str, Any] = field(default_factory=dict)

    @property
    def scans_root(self) -> Path:
        return self.out / "scans"

    def scan_job(self, scorer) -> ScanJob:
        return ScanJob(out=self.out, run_info=self.run_info, modality=self.modality, overwrite=self.overwrite,
                       dicom_outputs=self.dicom_outputs, log=lambda m: None,
                       score_one=lambda v: scorer.score_volume(v, with_reconstruction=self.write_reconstruction))

    def failed(self, ref, reason: str) -> ScanRecord:
        """A failed row written by the client (the scan's workers all died)."""
        record = new_record(ref, self.run_info)
        record.failed(reason, 0.0)
        scan_dir = safe_join(self.scans_root, ref.scan_id)
        remove_stale_temps(scan_dir)  # a worker killed mid-write leaves its temp files behind
        record.write(scan_dir)
        return record


_SCORERS: dict[tuple, Any] = {}
_SCORER_LOCK = threading.Lock()


def _worker_scorer(job: RemoteJob, torch_threads: int | None, worker_threads: int):
    """The scorer of this run, built once per worker process (later tasks reuse it)."""
    from ..runtime import set_threads

    key = (job.scorer_args, job.run_info["model_hash"], job.run_info["config_hash"],
           tuple(sorted(job.scorer_options.items())))
    with _SCORER_LOCK:
        if key not in _SCORERS:
            set_threads(local_world=worker_threads, threads=torch_threads, power_of_two=True)
            scorer = load_scorer(*job.scorer_args, log=lambda m: None, **job.scorer_options)
            seen = (scorer.loaded.model_hash, scorer.settings_hash())
            if seen != (job.run_info["model_hash"], job.run_info["config_hash"]):
                raise RuntimeError(f"this worker sees model {seen[0][:12]} / settings {seen[1]} at "
                                   f"{job.scorer_args[0]}, the client sees {job.run_info['model_hash'][:12]} / "
                                   f"{job.run_info['config_hash']}: give workers the same model folder (and "
                                   "method.json) as the client")
            applied = calibration_fingerprint(scorer.calibration_record) if scorer.calibration_applied else None
            if applied != job.run_info.get("calibration_id"):
                raise RuntimeError(f"this worker applies calibration {applied} from {job.scorer_args[0]}, the client "
                                   f"{job.run_info.get('calibration_id')}: give workers the same model folder as "
                                   "the client")
            _SCORERS.clear()  # one model per worker at a time
            _SCORERS[key] = scorer
        return _SCORERS[key]


def score_task(job: RemoteJob, ref, torch_threads: int | None) -> dict[str, Any]:
    """Runs on a worker: score one scan with the shared batch code; report who did it and how long."""
    from distributed import get_worker

    worker = get_worker()
    t0 = time.perf_counter()
    scorer = _worker_scorer(job, torch_threads, worker.state.nthreads)
    record = job.scan_job(scorer).run(ref)
    return {"record": record, "worker": worker.address, "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- client side

def _failure_reason(exc: BaseException, ref) -> str:
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return (f"{ref.source}: every Dask worker that scored it died ({exc.allowed_failures + 1} attempts; "
                "out of memory, or killed); score it alone or on workers with more memory")
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{ref.source}: cluster task failed: {exc.__class__.__name__}: {first}"


def absolute_scorer_args(scorer_args: tuple) -> tuple:
    """Workers may run in another working directory: send absolute paths."""
    model_dir, config_path, overrides, device = scorer_args
    config = str(Path(config_path).resolve()) if config_path is not None else None
    return str(Path(model_dir).resolve()), config, tuple(overrides), device


def _check_shared(job: RemoteJob, record: ScanRecord) -> None:
    if not (safe_join(job.scans_root, record.scan_id) / RESULT_FILE).is_file():
        raise OutputError(f"{job.scans_root.parent}: a worker scored {record.scan_id} but its result is not "
                          "visible here; --out, --input and --model must be on a filesystem shared by the "
                          "workers and this machine")


def score_on_cluster(spec: ClusterSpec, job: RemoteJob, refs: list, on_record: Callable[[ScanRecord], None],
                     log: Callable[[str], None]) -> dict[str, Any]:
    """Score ``refs`` on the cluster, calling ``on_record`` as each scan finishes; returns the
    engine section of summary.json (per-worker throughput)."""
    distributed = import_distributed()
    job = replace(job, out=job.out.resolve(), scorer_args=absolute_scorer_args(job.scorer_args))
    torch_threads = local_torch_threads(spec.n_workers) if spec.kind == "local" else None
    per_worker: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    with connect(spec) as client:
        n_workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        if n_workers == 0:
            log(f"waiting for Dask workers to join {spec.target}")
        run = uuid.uuid4().hex[:8]
        futures = {client.submit(score_task, job, ref, torch_threads, pure=False,
                                 retries=TASK_RETRIES, key=f"medidiff-score-{run}-{ref.scan_id}"): ref
                   for ref in refs}
        checked = False
        for future in distributed.as_completed(futures):
            ref = futures.pop(future)
            try:
                done = future.result()
            except Exception as exc:  # the scan still gets its row
                done = {"record": job.failed(ref, _failure_reason(exc, ref)), "worker": None, "seconds": 0.0}
            record = done["record"]
            if done["worker"] is not None:
                if not checked:
                    _check_shared(job, record)
                    checked = True
                stats = per_worker.setdefault(done["worker"], {"scans": 0, "busy_seconds": 0.0})
                stats["scans"] += 1
                stats["busy_seconds"] += done["seconds"]
            on_record(record)
    engine = _engine_summary(spec, n_workers, per_worker, len(refs), time.perf_counter() - t0)
    if refs:
        log(f"cluster: {len(engine['workers'])} workers scored {len(refs)} scans at "
            f"{engine['scans_per_minute']} scans/min (per worker: summary.json)")
    return engine


def _engine_summary(spec: ClusterSpec, n_workers: int, per_worker: dict[str, dict[str, float]], n_scans: int,
                    seconds: float) -> dict[str, Any]:
    workers = [{"worker": addr, "scans": int(s["scans"]), "busy_seconds": round(s["busy_seconds"], 2),
                "scans_per_minute": round(60 * s["scans"] / s["busy_seconds"], 2) if s["busy_seconds"] else None}
               for addr, s in sorted(per_worker.items())]
    return {"engine": "dask", "target": spec.target, "workers_at_start": n_workers, "scans_submitted": n_scans,
            "seconds": round(seconds, 2), "scans_per_minute": round(60 * n_scans / seconds, 2) if seconds else None,
            "workers": workers}
