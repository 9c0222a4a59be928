"""``qclip-convert official CKPT --out DIR``: a checkpoint of another code base → an artifact.

``official``: a ``.pth`` saved by the official Q-CLIP ``train.py``
(``qclip_engine/convert/official_qclip.py`` says what maps where). The artifact then exports,
scores, serves and trains further like any other. Prints every tensor it mapped and what it left
out. Exit codes: 0 done; 2 the checkpoint (or the backbone weights named) does not fit or cannot
be read — the message lists the keys and shapes that do not fit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..defaults import BACKBONE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qclip-convert", description="Convert a checkpoint of another code base into an artifact.")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    official = kinds.add_parser(
        "official", help="a checkpoint of the official Q-CLIP code (train.py's .pth)",
        description="Convert a checkpoint saved by the official Q-CLIP train.py into an artifact: RoPE qclip_official, "
                    "reference preprocessing, uniform sampler, 8 frames, as that code trained.")
    official.add_argument("checkpoint", type=Path, help="the .pth ({'state_dict': …}, keys possibly 'module.'-prefixed)")
    official.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    official.add_argument("--adapter-start-layer", type=int,
                          help="first adapted block (the official option of that name; default: read off the "
                               "checkpoint, the first block whose adapter LayerNorm was trained)")
    official.add_argument("--backbone", help=f"open_clip model name (default: the PE-Core model whose shapes fit, e.g. {BACKBONE})")
    official.add_argument("--backbone-weights",
                          help="refer to this weights file (Meta's PE-Core-*.pt or open_clip's safetensors) instead of "
                               "writing the checkpoint's backbone into the artifact; it must hold the same tensors")
    official.add_argument("--num-frames", type=int, default=8, help="frames per video (default: 8, the official loader's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ..convert.official_qclip import convert_official
    from ..errors import QCLIPError

    started = time.perf_counter()
    print(f"reading {args.checkpoint}", flush=True)
    try:
        out, ckpt = convert_official(
            args.checkpoint, args.out, adapter_start_layer=args.adapter_start_layer, backbone=args.backbone,
            backbone_weights=args.backbone_weights, num_frames=args.num_frames,
        )
    except QCLIPError as exc:
        print(f"qclip-convert: [{exc.code}] {exc}", file=sys.stderr)
        return 2
    for note in ckpt.notes:
        print(note)
    print(f"mapped {len(ckpt.mapped)} trained tensors:")
    width = max(len(src) for src, _, _ in ckpt.mapped)
    for src, dst, shape in ckpt.mapped:
        print(f"  {src:<{width}}  →  {dst}  {list(shape)}")
    if ckpt.unused:
        print(f"left out (blocks before adapter_start_layer {ckpt.adapter_start_layer}, never trained): "
              f"{ckpt.unused[0]} … {ckpt.unused[-1]} ({len(ckpt.unused)} blocks)")
    if ckpt.derived:
        print(f"checked, derived here: {', '.join(sorted(ckpt.derived))} equal the checkpoint's prompt_prefix/prompt_suffix")
    if ckpt.validation_results:
        print(f"the checkpoint's own validation results: {ckpt.validation_results}")
    print(f"artifact: {out} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
