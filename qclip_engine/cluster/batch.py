"""Batch scoring over a Ray cluster, on Ray Data.

The pipeline, over rows ``{"id", "path"}``::

    decode & sample ── Ray tasks (num_cpus each, retried max_retries times): the engine's own first
         │             stage (engine.sample_safely) → the sampled frames, or the input's error record
         ▼
    score ──────────── an actor pool (ActorPoolStrategy): each actor loads the artifact and backend
                       once (a QualityEngine), one backend call per batch (QualityEngine.run_batch);
                       num_gpus=1 per actor on GPUs, CPU actors otherwise

With ``decoder="device"`` (the device path: NVDEC decode, frames kept on the GPU) decoding moves
into the scoring actor — its QualityEngine decodes and scores — so frames never cross the host.

Every row keeps its ``id``; errors are rows too; the output holds one record per input
(``{"id", "input", "record"}``, ``record`` the JSON line ``qclip-score`` writes for that input),
restorable to input order by ``id``.

Faults. Scoring actors are restarted whenever they die (``max_restarts``) and the batch they held is
retried on the new one (``max_task_retries``); decode tasks are retried (``max_retries``). Rows of a
batch that failed all its retries are not lost: the pass runs with Ray Data's ``max_errored_blocks``
unlimited, the ids missing from its output run again one row per block, and an input that kills its
worker every time ends as a ``worker_crashed`` error record — the job itself never fails on one input.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import ray

from .. import defaults
from ..artifact import artifact_spec
from ..engine import QualityEngine, SampledVideo, VideoResult, error_result, sample_safely
from ..errors import QCLIPError, error_record
from ..video.container import VIDEO_SUFFIXES
from ..video.frames import HostSource
from ..video.limits import DecodeLimits
from ..video.sampling import check_sampler

WORKER_CRASHED = "worker_crashed"
# Test hook (tests/test_ray_batch.py), JSON: {"exit_on_batch": K, "marker": PATH} makes a scoring actor
# exit on its K-th batch while PATH does not exist (it creates PATH: once), as a killed machine would;
# {"poison": TEXT} makes a decode task exit on every input whose path holds TEXT, as a decoder fault.
CRASH_HOOK = "QCLIP_RAY_TEST_CRASH"


def _crash_hook() -> dict:
    return json.loads(os.environ.get(CRASH_HOOK) or "{}")


@dataclass
class RayOptions:
    """How the pipeline runs: the engine's settings, then the resources and retries of each stage."""

    engine: str = "auto"
    device: str = defaults.DEVICE
    precision: str = defaults.PRECISION
    batch: int = defaults.BATCH
    sampler: str | None = None  # default: the artifact's
    strict: bool = False
    # What one input may cost to decode (qclip_engine/video/limits.py); None: no limit.
    max_pixels: int | None = defaults.MAX_PICTURE_PIXELS
    max_frames: int | None = defaults.MAX_VIDEO_FRAMES
    max_decode_s: float | None = defaults.MAX_DECODE_S
    decoder: str = "host"  # "device": the device path (NVDEC), which decodes in the scoring actor
    fused: bool | None = None  # decode in the scoring actor; None: only for the device path
    actors: int = 1
    gpus_per_actor: float = 0.0  # 1 on GPU machines: one actor per GPU
    cpus_per_actor: float = 1.0
    decode_cpus: float = 1.0
    max_retries: int = 3  # decode tasks
    max_restarts: int = -1  # scoring actors: always brought back
    max_task_retries: int = 3  # a scoring batch, on the restarted actor


def input_rows(source: Any) -> list[dict] | ray.data.Dataset:
    """``{"id", "path"}`` rows of: a list of paths (ids 0…n-1, in order) or of such rows, a directory (its video files,
    recursively, sorted), a manifest file (one path per line; ``#`` comments), or a Ray Dataset with a
    ``path`` column (its ``id`` column, or the path as id)."""
    if isinstance(source, ray.data.Dataset):
        columns = source.columns() or []
        if "path" not in columns:
            raise ValueError(f"the dataset needs a 'path' column (it has {columns})")
        return source if "id" in columns else source.map(lambda row: {**row, "id": row["path"]})
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if root.is_dir():
            paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        elif root.is_file():
            lines = root.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
            paths = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        else:
            raise FileNotFoundError(f"{root}: neither a directory nor a manifest file")
    else:
        source = list(source)
        if source and all(isinstance(row, dict) for row in source):  # rows with their own ids
            return [{"id": row["id"], "path": str(row["path"])} for row in source]
        paths = [str(p) for p in source]
    return [{"id": i, "path": p} for i, p in enumerate(paths)]


def _model_settings(artifact: str, options: RayOptions) -> dict:
    """What the decode tasks need of the model (of any family), read off the artifact without loading it."""
    spec = artifact_spec(artifact)
    model = spec.config
    sampler = options.sampler or model.sampler
    check_sampler(sampler)
    return {
        "image_size": spec.image_size,
        "num_frames": int(model.num_frames),
        "preprocessing": model.preprocessing,
        "sampler": sampler,
        "strict": options.strict,
        "max_analysis_frames": defaults.MAX_ANALYSIS_FRAMES,
        "limits": _limits(options),
    }


def _limits(options: RayOptions) -> DecodeLimits:
    return DecodeLimits(max_pixels=options.max_pixels, max_frames=options.max_frames, max_seconds=options.max_decode_s)


def _record_row(row_id, result: VideoResult) -> dict:
    return {"id": row_id, "input": result.input, "record": json.dumps(result.to_record())}


def decode_batch(batch: dict[str, np.ndarray], settings: dict) -> dict[str, list]:
    """The decode stage (a Ray task): each row's sampled frames (pickled), or its error record."""
    source = HostSource(settings["image_size"], settings["num_frames"],
                        max_analysis_frames=settings["max_analysis_frames"], threads=1,
                        preprocessing=settings["preprocessing"], limits=settings["limits"])
    sampler = check_sampler(settings["sampler"])
    out: dict[str, list] = {"id": [], "input": [], "sample": [], "record": []}
    poison = _crash_hook().get("poison")
    for row_id, path in zip(batch["id"], batch["path"]):
        if poison and poison in str(path):
            os._exit(1)
        item = sample_safely(source, sampler, str(path), strict=settings["strict"])
        out["id"].append(row_id)
        out["input"].append(str(path))
        if isinstance(item, SampledVideo):
            out["sample"].append(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
            out["record"].append("")
        else:
            out["sample"].append(b"")
            out["record"].append(json.dumps(item.to_record()))
    return out


class ScoreActor:
    """The scoring stage: one QualityEngine per actor (artifact and backend loaded once)."""

    def __init__(self, artifact: str, options: dict):
        opts = RayOptions(**options)
        self.fused = _fused(opts)
        self.engine = QualityEngine(artifact, engine=opts.engine, device=opts.device, precision=opts.precision,
                                    batch=opts.batch, sampler=opts.sampler, strict=opts.strict,
                                    decoder=opts.decoder, workers=1, limits=_limits(opts))
        self.batches = 0

    def _exit_hook(self) -> None:
        hook = _crash_hook()
        self.batches += 1
        if self.batches == hook.get("exit_on_batch") and not os.path.exists(hook["marker"]):
            Path(hook["marker"]).touch()
            os._exit(1)  # as a killed worker: no cleanup, no answer

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        self._exit_hook()
        if self.fused:  # the device path: this actor's engine decodes and scores
            results = self.engine.score([str(p) for p in batch["path"]])
            rows = [_record_row(i, r) for i, r in zip(batch["id"], results)]
        else:
            rows = self._score_sampled(batch)
        return {key: [row[key] for row in rows] for key in ("id", "input", "record")}

    def _score_sampled(self, batch: dict[str, np.ndarray]) -> list[dict]:
        rows: list[dict | None] = []
        videos: list[tuple[int, SampledVideo]] = []
        for i, (row_id, path, sample, record) in enumerate(zip(batch["id"], batch["input"], batch["sample"], batch["record"])):
            if record:
                rows.append({"id": row_id, "input": str(path), "record": str(record)})
            else:
                rows.append(None)
                videos.append((i, pickle.loads(sample)))
        for start in range(0, len(videos), self.engine.batch):
            chunk = videos[start:start + self.engine.batch]
            try:
                results = self.engine.run_batch([v for _, v in chunk])
            except Exception as exc:  # the backend failed on this batch: each of its inputs says so
                results = [error_result(v.input, exc) for _, v in chunk]
            for (i, _), result in zip(chunk, results):
                rows[i] = _record_row(batch["id"][i], result)
        return rows


def _fused(options: RayOptions) -> bool:
    return options.decoder == "device" if options.fused is None else options.fused


def pipeline(rows: ray.data.Dataset, artifact: str, options: RayOptions) -> ray.data.Dataset:
    """Rows ``{"id", "path"}`` → rows ``{"id", "input", "record"}`` (lazy; nothing runs yet)."""
    actor_args = dict(
        fn_constructor_kwargs={"artifact": str(artifact), "options": asdict(options)},
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        batch_size=options.batch,
        batch_format="numpy",
        num_gpus=options.gpus_per_actor,
        num_cpus=options.cpus_per_actor,
        max_restarts=options.max_restarts,
        max_task_retries=options.max_task_retries,
    )
    if _fused(options):
        return rows.map_batches(ScoreActor, **actor_args)
    decoded = rows.map_batches(decode_batch, fn_kwargs={"settings": _model_settings(artifact, options)},
                               batch_size=1, batch_format="numpy", num_cpus=options.decode_cpus,
                               max_retries=options.max_retries)
    return decoded.map_batches(ScoreActor, **actor_args)


def _crashed(row: dict) -> dict:
    error = QCLIPError("every worker that took this input died, on each retry and again alone in its batch "
                       "(a decoder fault, say); the other inputs went on", code=WORKER_CRASHED)
    return {"id": row["id"], "input": str(row["path"]),
            "record": json.dumps({"input": str(row["path"]), "error": error_record(error), "timing_ms": {}})}


def score_dataset(source: Any, artifact: str | os.PathLike, options: RayOptions | None = None) -> ray.data.Dataset:
    """Every input's record, as a materialised Ray Dataset ``{"id", "input", "record"}``: exactly
    one row per input, whatever died on the way (module docstring). Write it where Ray writes
    (``write_json``, ``write_parquet``: a local directory, an object store) or read it back with
    :func:`ordered_records`."""
    options = options or RayOptions()
    rows = input_rows(source)
    if not isinstance(rows, list):  # the driver keeps the (id, path) list: it checks every id came back
        rows = rows.select_columns(["id", "path"]).take_all()
    context = ray.data.DataContext.get_current()
    saved = context.max_errored_blocks
    # A block that failed all its retries is dropped, then redone below. Datasets snapshot the context
    # when they are made, so every dataset of this job is made from here on.
    context.max_errored_blocks = -1
    try:
        done = pipeline(ray.data.from_items(rows), artifact, options).materialize()
        missing = _missing(rows, done)
        if missing:  # alone this time: a poison input no longer takes its block's neighbours with it
            again = pipeline(ray.data.from_items(missing, override_num_blocks=len(missing)), artifact, options)
            done = done.union(again.materialize()).materialize()
            missing = _missing(rows, done)
        if missing:
            done = done.union(ray.data.from_items([_crashed(row) for row in missing])).materialize()
    finally:
        context.max_errored_blocks = saved
    return done


def _missing(rows: list[dict], done: ray.data.Dataset) -> list[dict]:
    have = set(_column(done, "id"))
    return [row for row in rows if row["id"] not in have]


def _column(ds: ray.data.Dataset, name: str) -> list:
    if ds.count() == 0:
        return []
    return [row[name] for row in ds.select_columns([name]).take_all()]


def add_records(done: ray.data.Dataset | None, rows: list[dict]) -> ray.data.Dataset:
    """``done`` with more ``{"id", "input", "record"}`` rows (records made before any decoding)."""
    extra = ray.data.from_items(rows)
    return extra if done is None else done.union(extra)


def ordered_records(done: ray.data.Dataset | Iterable[dict]) -> list[dict]:
    """The records in input order (by ``id``), parsed."""
    rows = done.take_all() if isinstance(done, ray.data.Dataset) else list(done)
    return [json.loads(row["record"]) for row in sorted(rows, key=lambda row: row["id"])]


def connect(address: str, **init_kwargs) -> None:
    """``local``: a Ray instance of this process's own; ``auto``: the cluster ``ray start`` runs here
    (or ``RAY_ADDRESS``); anything else: that cluster's address."""
    if ray.is_initialized():
        return
    ray.init(address=None if address == "local" else address, **init_kwargs)
