"""``qclip-convert {official,clipvqa,fastvqa} CKPT --out DIR``: a checkpoint of another code base → an artifact;
``qclip-convert vificlip CKPT --out FILE``: a ViFi-CLIP checkpoint → an open_clip weights file
(``qclip_engine/convert/vificlip.py``), a ``pretrained`` for DVLTA-VQA's CLIP tower.

``official``: a ``.pth`` saved by the official Q-CLIP ``train.py``
(``qclip_engine/convert/official_qclip.py`` says what maps where). ``clipvqa``: a ``.pth`` saved by
the released CLIPVQA ``main.py`` (``qclip_engine/convert/clipvqa.py``). ``fastvqa``: a ``.pth`` of the
released FAST-VQA code, e.g. ``FAST_VQA_B_1_4.pth`` (``qclip_engine/convert/fastvqa.py``). The artifact
then exports, scores, serves and trains further like any other of its family. Prints what it mapped
and what it left out.
Exit codes: 0 done; 2 the checkpoint (or the backbone weights named) does not fit or cannot be
read — the message lists the keys and shapes that do not fit — or ``--out`` cannot be written (an
existing file, a path under a file, a place where nothing can be created: checked before the
checkpoint is read, as the artifact is written only once the conversion is done). The artifact is
written into a folder beside ``--out`` and put in place at the end (``artifact.staged_directory``): a
refusal leaves no file and no folder. ``clipvqa`` prints the label list the checkpoint names
(``DATA.LABEL_LIST``) and refuses one other than the released ``labels.csv`` unless ``--labels`` or
``--level-words`` gives its words.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..defaults import BACKBONE
from .arguments import cannot_create_in, positive_int

SAT_ATTENTIONS = ("alone", "batch")  # model/clipvqa/config.py's, named here so that --help needs no torch
FASTVQA_VARIANTS = ("fast-vqa-b", "fastervqa", "fast-vqa-m")  # model/fastvqa/config.py's VARIANTS, likewise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qclip-convert", description="Convert a checkpoint of another code base into an artifact.")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    official = kinds.add_parser(
        "official", help="a checkpoint of the official Q-CLIP code (train.py's .pth)",
        description="Convert a checkpoint saved by the official Q-CLIP train.py into an artifact: RoPE qclip_official, "
                    "reference preprocessing, uniform sampler, 8 frames, as that code trained.")
    official.add_argument("checkpoint", type=Path, help="the .pth ({'state_dict': …}, keys possibly 'module.'-prefixed)")
    official.add_argument("--out", type=Path, required=True, help="artifact directory to write (required, no default)")
    official.add_argument("--adapter-start-layer", type=int,
                          help="first adapted block (the official option of that name; default: read off the "
                               "checkpoint, the first block whose adapter LayerNorm was trained)")
    official.add_argument("--backbone", help=f"open_clip model name (default: the PE-Core model whose shapes fit, e.g. {BACKBONE})")
    official.add_argument("--backbone-weights",
                          help="refer to this weights file (Meta's PE-Core-*.pt or open_clip's safetensors) instead of "
                               "writing the checkpoint's backbone into the artifact; it must hold the same tensors "
                               "(default: none, the backbone is written into the artifact)")
    official.add_argument("--num-frames", type=positive_int, default=8,
                          help="frames per video (default: 8, the official loader's)")

    clipvqa = kinds.add_parser(
        "clipvqa", help="a checkpoint of the released CLIPVQA code (main.py's ckpt_epoch_N.pth or best.pth)",
        description="Convert a checkpoint saved by the released CLIPVQA main.py into an artifact of the clipvqa "
                    "family. Backbone, frames, image size and block counts are read off the tensors' shapes; the "
                    "artifact stores every tensor (nothing is downloaded).")
    clipvqa.add_argument("checkpoint", type=Path,
                         help="the .pth ({'model': …, 'config': …}; read weights-only, yacs not needed)")
    clipvqa.add_argument("--out", type=Path, required=True, help="artifact directory to write (required, no default)")
    clipvqa.add_argument("--num-frames", type=positive_int,
                         help="frames per video (default: read off the checkpoint, mit.positional_embedding; another "
                              "number is refused, as the position embedding and the temporal conv have that length)")
    clipvqa.add_argument("--sat-attention", choices=SAT_ATTENTIONS, default=SAT_ATTENTIONS[0],
                         help="alone: a video's score depends on that video only (the engine batches videos as they "
                              "come); batch: the released attention across the videos of a batch, to reproduce the "
                              f"released training and validation (default: {SAT_ATTENTIONS[0]})")
    words = clipvqa.add_mutually_exclusive_group()
    words.add_argument("--labels", type=Path, metavar="FILE",
                       help="the label file the checkpoint was trained with (its config's DATA.LABEL_LIST, e.g. the "
                            "released labels/labels_1.csv: 'id,name' rows, worst level first) (default: the words of "
                            "the released labels/labels.csv; refused when the checkpoint names another file)")
    words.add_argument("--level-words", type=_words, metavar="W1,W2,…",
                       help="the level words, worst first, comma-separated, instead of --labels (default: as --labels)")

    fastvqa = kinds.add_parser(
        "fastvqa", help="a checkpoint of the released FAST-VQA code (FAST_VQA_B_1_4.pth, FAST_VQA_3D_1_1.pth, …)",
        description="Convert a checkpoint of the released FAST-VQA code into an artifact of the fastvqa family. The "
                    "backbone is read off the tensors' shapes; the fragment grid, frames and views are the variant's "
                    "(the released evaluation settings). Weights only: nothing in the file runs.")
    fastvqa.add_argument("checkpoint", type=Path, help="the .pth ({'state_dict': …, 'validation_results': …})")
    fastvqa.add_argument("--out", type=Path, required=True, help="artifact directory to write (required, no default)")
    fastvqa.add_argument("--variant", choices=FASTVQA_VARIANTS,
                         help="fast-vqa-b: 7×7 fragments, 4 views of 32 frames; fastervqa: 7×7, one view of 8 "
                              "temporal fragments × 4 frames; fast-vqa-m: 4×4, 4 views of 16 frames (default: the one "
                              "the released file name names — FAST_VQA_B…, FAST_VQA_3D…, FAST_VQA_M… —, else the only "
                              "one the weights fit; fast-vqa-b and fastervqa have the same tensors, so a file named "
                              "neither way needs it)")
    fastvqa.add_argument("--views", type=positive_int,
                         help="views averaged per video: the video is cut into that many equal segments, each "
                              "sampled as one view of the variant (default: the variant's, 4 for fast-vqa-b and "
                              "fast-vqa-m, 1 for fastervqa; each view costs one backbone pass)")

    vificlip = kinds.add_parser(
        "vificlip", help="a fully fine-tuned ViFi-CLIP checkpoint (e.g. vifi_clip_10_epochs_k400_full_finetuned.pth) → "
                         "an open_clip weights file",
        description="Convert a fully fine-tuned ViFi-CLIP checkpoint into one open_clip-layout .safetensors weights file "
                    "(every tensor of the backbone; the token embedding, which ViFi-CLIP never trained, from "
                    "--token-embedding-from, checked against the class prompts the checkpoint embedded with it). Use "
                    "it as backbone: ViT-B-16, pretrained: FILE, quick_gelu: true. Prompt-learning checkpoints are "
                    "refused. Weights only: nothing in the file runs.")
    vificlip.add_argument("checkpoint", type=Path,
                          help="the .pth ({'model': …, 'epoch': …, 'config': …}, keys 'module.'-prefixed; read "
                               "weights-only, yacs not needed)")
    vificlip.add_argument("--out", type=Path, required=True, metavar="FILE",
                          help="weights file to write, ending in .safetensors (required, no default; an existing file "
                               "is replaced)")
    vificlip.add_argument("--token-embedding-from", default="openai", metavar="WEIGHTS",
                          help="where token_embedding.weight comes from: an open_clip pretrained tag of --backbone or "
                               "a local open_clip-layout weights file (default: openai, OpenAI's weights ViFi-CLIP "
                               "started from; downloaded once)")
    vificlip.add_argument("--backbone", default="ViT-B-16",
                          help="open_clip model whose layout the file has (default: ViT-B-16, the released models')")
    return parser


def _words(text: str) -> tuple[str, ...]:
    words = tuple(w.strip() for w in text.split(","))
    if len(words) < 2 or not all(words):
        raise argparse.ArgumentTypeError(f"{text!r}: at least two comma-separated words, none empty")
    return words


def _unwritable_dir(path: Path) -> str | None:
    """Why the artifact directory ``path`` cannot be written, or None."""
    if os.path.lexists(path) and not os.path.isdir(path):
        return "exists and is not a directory"
    existing = next(p for p in (path, *path.parents) if os.path.exists(p))  # what is there of the path
    if not os.path.isdir(existing):
        return f"{existing} is not a directory"
    return cannot_create_in(existing)


def _unwritable_file(path: Path) -> str | None:
    """Why the weights file ``path`` cannot be written, or None: not a ``.safetensors`` name (open_clip
    reads a file by its suffix), an existing directory there, or a parent that cannot be created or
    written into."""
    if path.suffix != ".safetensors":
        return "must end in .safetensors (open_clip picks its reader by the file's suffix)"
    if os.path.isdir(path):
        return "is a directory"
    existing = next(p for p in path.parents if os.path.exists(p))  # what is there of its folder
    if not os.path.isdir(existing):
        return f"{existing} is not a directory"
    return cannot_create_in(existing)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    unwritable = _unwritable_file if args.kind == "vificlip" else _unwritable_dir
    if problem := unwritable(args.out):
        print(f"qclip-convert: --out {args.out}: {problem}", file=sys.stderr)
        return 2
    from ..errors import QCLIPError

    started = time.perf_counter()
    print(f"reading {args.checkpoint}", flush=True)
    try:
        out = {"official": _official, "clipvqa": _clipvqa, "fastvqa": _fastvqa, "vificlip": _vificlip}[args.kind](args)
    except QCLIPError as exc:
        print(f"qclip-convert: [{exc.code}] {exc}", file=sys.stderr)
        return 2
    print(f"{'weights file' if args.kind == 'vificlip' else 'artifact'}: {out} ({time.perf_counter() - started:.1f} s)")
    return 0


def _official(args: argparse.Namespace) -> Path:
    from ..convert.official_qclip import convert_official

    out, ckpt = convert_official(
        args.checkpoint, args.out, adapter_start_layer=args.adapter_start_layer, backbone=args.backbone,
        backbone_weights=args.backbone_weights, num_frames=args.num_frames,
    )
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
    return out


def _clipvqa(args: argparse.Namespace) -> Path:
    from ..convert.clipvqa import (
        clipvqa_config,
        convert_clipvqa,
        label_list,
        level_words_for,
        mapping_summary,
        read_checkpoint,
        read_clipvqa,
        read_label_file,
    )

    checkpoint = read_checkpoint(args.checkpoint)
    state = read_clipvqa(checkpoint)
    given = read_label_file(args.labels) if args.labels is not None else args.level_words
    print(f"its label list (DATA.LABEL_LIST): {label_list(checkpoint) or 'not named'}", flush=True)
    words = level_words_for(checkpoint, given)
    source = f"from {args.labels}" if args.labels is not None else "as given" if given else "the default"
    print(f"level words ({source}), worst first: {', '.join(words)}")
    overrides = {"sat_attention": args.sat_attention, "level_words": words}
    if args.num_frames is not None:
        overrides["num_frames"] = args.num_frames
    config = clipvqa_config(state, **overrides)
    own = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    said = {k: own.get(group, {}).get(k) for group, k in (("MODEL", "ARCH"), ("DATA", "NUM_FRAMES"), ("DATA", "INPUT_SIZE"))
            if isinstance(own.get(group), dict)}
    print(f"the checkpoint: epoch {checkpoint.get('epoch')}, max_accuracy {checkpoint.get('max_accuracy')} "
          f"(its validation PLCC + SROCC); its config says {said or 'nothing readable'}")
    print(f"read off the shapes: backbone {config.backbone}, {config.num_frames} frames, {config.image_size} px, "
          f"{config.sat_layers} SAT blocks, {config.vat_layers} VAT layers; sat_attention {config.sat_attention}")
    rules = mapping_summary(state)
    print(f"mapped {sum(n for _, _, n in rules)} tensors (released → here):")
    width = max(len(src) for src, _, _ in rules)
    for src, dst, n in rules:
        print(f"  {src:<{width}}  →  {dst}  ({n})")
    left = sorted(str(k) for k in checkpoint if k not in ("model", "epoch", "max_accuracy", "config"))
    if left:
        print(f"left out (training state): {', '.join(left)}")
    return convert_clipvqa(state, args.out, **overrides)


def _fastvqa(args: argparse.Namespace) -> Path:
    from ..artifact import save_artifact, staged_directory
    from ..convert.fastvqa import PREFIXES, choose_variant, load_fastvqa, read_checkpoint, read_fastvqa

    checkpoint = read_checkpoint(args.checkpoint)
    state = read_fastvqa(checkpoint)
    variant, how = choose_variant(state, args.checkpoint, args.variant)
    overrides = {"views": args.views} if args.views is not None else {}
    converted = load_fastvqa(state, variant, **overrides)
    c = converted.config
    print(f"variant {variant} ({how}); its validation results: {checkpoint.get('validation_results', 'not saved')}")
    print(f"read off the shapes: embed_dim {c.embed_dim}, depths {list(c.depths)}, heads {list(c.num_heads)}, window "
          f"{list(c.window_size)}, fragment biases {list(c.frag_biases)}; the variant's input: {c.image_size} px "
          f"fragments, {c.num_frames} frames as {c.views} view(s), sampler {c.sampler}")
    tensors = converted.model.state_dict()
    for rel, here in PREFIXES:
        print(f"mapped {sum(k.startswith(here) for k in tensors)} tensors  {rel}*  →  {here}*")
    print(f"checked, derived here: {len(converted.checked)} relative_position_index buffers equal the window's")
    left = sorted(str(k) for k in checkpoint if k not in ("state_dict",))
    if left:
        print(f"left out: {', '.join(left)}")
    with staged_directory(args.out) as stage:
        save_artifact(converted.model, stage)
    return args.out


def _vificlip(args: argparse.Namespace) -> Path:
    from ..convert.vificlip import convert_vificlip

    done = convert_vificlip(args.checkpoint, args.out, backbone=args.backbone,
                            token_embedding_from=args.token_embedding_from)
    print(f"the checkpoint: epoch {done.epoch}, max_accuracy {done.max_accuracy} (its validation top-1); its config "
          f"says {done.config or 'nothing readable'}")
    strip = f", 'module.' stripped from {done.prefixed} keys" if done.prefixed else ""
    print(f"mapped {done.tensors - 1} tensors (ViFi-CLIP → open_clip {done.backbone}{strip}):")
    width = max(len(src) for src, _, _ in done.rules)
    for src, dst, n in done.rules:
        print(f"  {src:<{width}}  →  {dst}  ({n})")
    print(f"added token_embedding.weight {list(done.token_embedding_shape)} from {done.token_embedding_from} "
          "(ViFi-CLIP never trained it: it embedded its class prompts with OpenAI's)")
    for name, shape in done.dropped:
        print(f"dropped: {name} {list(shape)}")
    print(f"sanity check {done.check}")
    if done.left_out:
        print(f"left out (training state): {', '.join(done.left_out)}")
    print(f"wrote {done.tensors} tensors; use backbone: {done.backbone}, pretrained: {done.out}, quick_gelu: true")
    return done.out


if __name__ == "__main__":
    sys.exit(main())
