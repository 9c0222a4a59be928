"""Offline demo of the model machinery on a generated clip (``python -m train.demo``).

No pretrained CLIP weights are fetched: the backbone is randomly initialised, so the
numbers printed show that the pipeline runs end to end (frames → model → level
similarities → score → artifact → identical score) and how long it takes on this
machine. They say nothing about the quality of the clip.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from qclip_engine import QCLIP, QUALITY_LEVELS, QCLIPConfig, load_artifact, save_artifact
from qclip_engine.video.sampling import uniform


def generated_clip(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A moving colour gradient with a burst of noise in its middle third, uint8 ``[T, H, W, 3]``."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[None, :, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, None, :]
    r = 0.5 + 0.5 * np.sin(2 * np.pi * (x + 0.02 * t))
    g = 0.5 + 0.5 * np.sin(2 * np.pi * (y + 0.03 * t))
    b = 0.5 + 0.5 * np.cos(2 * np.pi * (x + y) + 0 * t)
    frames = np.stack(np.broadcast_arrays(r, g, b), axis=-1) * 255
    burst = slice(num_frames // 3, 2 * num_frames // 3)
    frames[burst] += rng.normal(0, 40, size=frames[burst].shape)
    return np.clip(frames, 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="PE-Core-T-16-384", help="open_clip model name (random init)")
    parser.add_argument("--frames", type=int, default=48, help="length of the generated clip")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    print(f"Building Q-CLIP on a RANDOM-INIT {args.backbone} backbone (no pretrained weights are used) …")
    start = time.perf_counter()
    model = QCLIP(QCLIPConfig(backbone=args.backbone, pretrained=None)).eval()
    trainable = sum(p.numel() for p in model.trainable_parameters())
    frozen = sum(p.numel() for p in model.backbone.parameters())
    print(f"  built in {time.perf_counter() - start:.1f} s: {frozen:,} frozen backbone parameters, {trainable:,} trainable")

    h, w = model.image_size
    clip = generated_clip(args.frames, h, w)
    k = model.config.num_frames
    indices = uniform(len(clip), k)
    print(f"Generated clip: {len(clip)} frames of {w}×{h} (noise burst in the middle third); sampled frames {indices.tolist()}")
    video = model.normalize(torch.from_numpy(clip[indices]).unsqueeze(0))

    with torch.no_grad():
        for zero_shot in (True, False):
            model.zero_shot = zero_shot
            start = time.perf_counter()
            sims = model.level_sims(video)[0]
            score = model.score_from_sims(sims.unsqueeze(0))[0]
            elapsed = time.perf_counter() - start
            mode = "zero-shot (expected level, 1–5)" if zero_shot else "untrained adapters (learned head)"
            levels = "  ".join(f"{name} {s:+.4f}" for name, s in zip(QUALITY_LEVELS, sims.tolist()))
            print(f"  {mode}: score {score.item():.4f}  [{levels}]  in {elapsed:.2f} s on CPU")

        with tempfile.TemporaryDirectory() as tmp:
            save_artifact(model, tmp)
            reloaded = load_artifact(tmp)
            same = torch.equal(reloaded(video), model(video))
        print(f"Artifact round trip (config.json + adapters.safetensors): identical score = {same}")
    print("These scores come from a random backbone: they exercise the machinery, they are not a quality measurement.")


if __name__ == "__main__":
    main()
