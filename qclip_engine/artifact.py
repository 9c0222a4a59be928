"""Save and load trained models (of any family: ``model/families.py``) as artifact directories.

An artifact is ``config.json`` (the family and everything needed to rebuild the model:
for Q-CLIP the backbone name and weights source, widths, K, r, prompts, frames, sampler,
preprocessing; calibration, versions) and the family's tensors file (``Family.stored_file``:
what its ``artifact_tensors`` gives; for Q-CLIP ``adapters.safetensors``, the trainable tensors only,
the frozen backbone being rebuilt from its name or file; for CLIPVQA ``model.safetensors``, every
tensor; an artifact written before families named their files has ``adapters.safetensors``). A fingerprint of the backbone's
weights is stored too, so an artifact refuses to run on a backbone other than the one
it was trained on.

What ``config.json`` may hold is ``artifact_schema.py``'s. Saving and loading both check it, that
the calibration maps scores to finite MOS and that every tensor is finite (``artifact_invalid``
otherwise); a non-finite number the model still computes is ``engine.run_batch``'s
``non_finite_output``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import numbers
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .artifact_schema import check_config
from .environment import versions
from .errors import ArtifactContentError, ArtifactError
from .model.backbone import weights_loaded_after
from .model.families import ADAPTERS_FILE, DEFAULT_FAMILY, FAMILIES, Family, family_of, get_family

FORMAT = "qclip-artifact"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
# A calibration must map the scores it was fitted on, pred_mean ± this many pred_std, to finite MOS.
CALIBRATION_PROBE_SPREADS = (-4.0, 0.0, 4.0)
_FINGERPRINT_ELEMENTS = 4096
_FROM_ARTIFACT = object()  # load_artifact's default: the weights source saved in the artifact


def backbone_fingerprint(model: nn.Module) -> str:
    """A cheap, deterministic hash of the weights an artifact does not store
    (``model.rebuilt_state()``: the frozen backbone).

    Names, shapes and the first elements of every tensor: any two different weight
    sets (another checkpoint, another random init) differ there.
    """
    digest = hashlib.sha256()
    for name, tensor in model.rebuilt_state().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        head = tensor.detach().reshape(-1)[:_FINGERPRINT_ELEMENTS].to("cpu", torch.float32)
        digest.update(head.numpy().tobytes())
    return digest.hexdigest()


def _calibration_to_save(calibration: Any) -> Any:
    """The calibration as ``config.json`` stores it: its numbers (numpy's too) as Python floats;
    anything else is left for the schema to refuse."""
    if not isinstance(calibration, Mapping):
        return calibration
    return {k: float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else v for k, v in calibration.items()}


def calibrated_mos(scores: np.ndarray | torch.Tensor, calibration: dict[str, float]) -> np.ndarray:
    """Raw scores → the training set's MOS scale (the linear rescale stored at training time).
    An overflow gives inf silently: callers check (``engine.run_batch``: ``non_finite_output``)."""
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    c = calibration
    with np.errstate(over="ignore", invalid="ignore"):
        return (s - c["pred_mean"]) / c["pred_std"] * c["target_std"] + c["target_mean"]


def _check_calibrated_range(calibration: dict[str, float] | None, where: str) -> None:
    """A calibration whose fields passed the schema must still map the scores it was fitted on to
    finite MOS: spreads of 1e-308 and 1e308 are each finite and > 0, their ratio is not."""
    if calibration is None:
        return
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is what is looked for
        ratio = np.float64(calibration["target_std"]) / np.float64(calibration["pred_std"])
        probes = calibration["pred_mean"] + np.array(CALIBRATION_PROBE_SPREADS) * calibration["pred_std"]
    if not np.isfinite(ratio):
        raise ArtifactContentError(f"{where}: calibration.target_std / calibration.pred_std is not finite "
                                   f"({calibration['target_std']!r} / {calibration['pred_std']!r})")
    mos = calibrated_mos(probes, calibration)
    if not (np.isfinite(probes).all() and np.isfinite(mos).all()):
        raise ArtifactContentError(f"{where}: calibration maps scores within {max(CALIBRATION_PROBE_SPREADS):g} "
                                   f"pred_std of pred_mean to no finite MOS ({probes.tolist()} → {mos.tolist()})")


def _check_finite(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse a tensor holding NaN or ±inf: one such weight makes every score NaN."""
    for name, tensor in tensors.items():
        # A finite sum proves every element finite, at the cost of one read; a non-finite one may be
        # an overflow of finite values (FP16), so the elements are counted then.
        if not tensor.is_floating_point() or torch.isfinite(tensor.sum()):
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ArtifactContentError(f"{where}: tensor {name} {list(tensor.shape)} holds {bad} NaN or infinite "
                                       f"value(s) of {tensor.numel()}")


def write_artifact_file(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: a crash never leaves half a file. The temp file is
    created with mode 0666 less the umask, like any file (``mkstemp``'s 0600 would keep a service
    running as another user from loading the artifact)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = os.stat(tmp).st_mode  # 0666 less the umask, as the kernel applied it
    try:
        write(tmp)
        os.chmod(tmp, mode)  # writers that recreate the file (safetensors does) get it back
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike) -> Iterator[Path]:
    """A new folder beside ``out`` to write an artifact into, put in place once the block is done: a
    refused or interrupted conversion leaves no file and no folder (nor the parents it created).
    ``out`` absent or an empty directory: the folder becomes ``out`` (renamed over the empty one); a
    directory holding files: the new files are moved into it, replacing those of the same names."""
    out = Path(out)
    created = [p for p in (out.parent, *out.parent.parents) if not os.path.exists(p)]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.{secrets.token_hex(8)}.tmp"
    os.mkdir(stage, 0o777)  # 0777 less the umask, like any folder (mkdtemp's 0700 is not)
    try:
        yield stage
        _put_in_place(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for parent in created:
            with contextlib.suppress(OSError):  # one that something else wrote into stays
                parent.rmdir()
        raise


def _put_in_place(stage: Path, out: Path) -> None:
    if not os.path.isdir(out) or not any(out.iterdir()):
        os.replace(stage, out)  # rename(2) replaces an empty directory
        return
    for entry in stage.iterdir():
        os.replace(entry, out / entry.name)
    stage.rmdir()


def save_artifact(model: nn.Module, directory: str | os.PathLike, calibration: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (of any registered family, ``model/families.py``) to ``directory``
    (created if needed); returns the directory. Refuses (``ArtifactContentError``, before writing
    anything) what loading would refuse: a config outside ``artifact_schema.py``, a calibration
    without finite MOS, a NaN or infinite tensor."""
    out = Path(directory)
    family = family_of(model)
    calibration = _calibration_to_save(calibration if calibration is not None else model.calibration)
    model_cfg = model.config.to_dict()
    pretrained = model_cfg.get("pretrained")
    if pretrained is not None and Path(pretrained).expanduser().is_file():
        weights = Path(pretrained).expanduser().resolve()
        # a weights file inside the artifact (qclip-convert writes one) is named relative to it, so the
        # directory can move; any other file by its absolute path
        inside = weights.is_relative_to(out.resolve())
        model_cfg["pretrained"] = str(weights.relative_to(out.resolve()) if inside else weights)
    info = model.artifact_info()
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": family.name,
        "model": model_cfg,
        "mode": "zero_shot" if getattr(model, "zero_shot", False) else "trained",
        **info,
        "backbone": info.get("backbone", {}) | {"pretrained": model_cfg.get("pretrained"), "fingerprint": backbone_fingerprint(model)},
        "calibration": calibration,
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    refused = f"cannot save the artifact {out}"
    check_config(config, refused)
    _check_calibrated_range(calibration, refused)
    tensors = {k: v.to("cpu").contiguous() for k, v in model.artifact_tensors().items()}
    _check_finite(tensors, refused)
    _check_finite(model.rebuilt_state(), f"{refused}: the backbone (rebuilt on load)")
    out.mkdir(parents=True, exist_ok=True)
    write_artifact_file(out / family.stored_file, lambda p: save_file(tensors, p, metadata={"format": FORMAT}))
    write_artifact_file(out / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    return out


def read_artifact_config(directory: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of an artifact, checked against ``artifact_schema.py``; raises ``ArtifactError``."""
    root = Path(directory)
    if not root.is_dir():
        raise ArtifactError(f"artifact directory not found: {root}", code="not_found")
    if not (root / CONFIG_FILE).is_file():
        raise ArtifactError(f"artifact {root} lacks {CONFIG_FILE}")
    try:
        config = json.loads((root / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{root / CONFIG_FILE} is not valid JSON: {exc}") from exc
    stated = config if isinstance(config, dict) else {}
    if stated.get("format") != FORMAT or stated.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{root} is not a {FORMAT} v{FORMAT_VERSION} artifact "
            f"(format={stated.get('format')!r}, version={stated.get('format_version')!r})"
        )
    check_config(config, str(root / CONFIG_FILE))
    _check_calibrated_range(config.get("calibration"), str(root / CONFIG_FILE))
    if not tensors_file(root, config).is_file():
        raise ArtifactError(f"artifact {root} lacks {tensors_file(root, config).name}")
    return config


def tensors_file(directory: str | os.PathLike, config: dict[str, Any]) -> Path:
    """The file an artifact keeps its tensors in: its family's ``stored_file``, or
    ``adapters.safetensors``, where every family kept them before (an older CLIPVQA artifact)."""
    root = Path(directory)
    family = FAMILIES.get(config.get("family", DEFAULT_FAMILY))
    named = root / (family.stored_file if family is not None else ADAPTERS_FILE)
    return root / ADAPTERS_FILE if not named.is_file() and (root / ADAPTERS_FILE).is_file() else named


def artifact_family(directory: str | os.PathLike) -> str:
    """The family an artifact holds, read off its ``config.json`` without building the model."""
    return read_artifact_config(directory).get("family", DEFAULT_FAMILY)


def _stored_settings(root: Path, config: dict[str, Any]) -> tuple[Family, dict[str, Any]]:
    """The artifact's family and its stored model settings, checked against the family's config."""
    try:
        family = get_family(config.get("family", DEFAULT_FAMILY))
    except ValueError as exc:
        raise ArtifactError(f"{root / CONFIG_FILE}: {exc}") from exc
    model_cfg = dict(config["model"])
    unknown = sorted(set(model_cfg) - family.config_fields())
    if unknown:
        raise ArtifactError(f"{root / CONFIG_FILE} has model settings this version does not know: {unknown}")
    return family, model_cfg


class ArtifactSpec(NamedTuple):
    config: Any  # the family's config dataclass: num_frames, sampler, preprocessing, …
    levels: tuple[str, ...]  # level names, lowest first
    image_size: tuple[int, int]  # the frames' (H, W)


def artifact_spec(directory: str | os.PathLike) -> ArtifactSpec:
    """What an artifact's model takes and gives, read off ``config.json`` without building the
    model (the Ray driver's decode tasks and ``qclip-score``'s CSV columns need no more)."""
    root = Path(directory)
    config = read_artifact_config(root)
    family, model_cfg = _stored_settings(root, config)
    try:
        model_config = family.config(**model_cfg)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{root / CONFIG_FILE}: invalid model settings: {exc}") from exc
    levels = tuple(config.get("prompts", {}).get("levels") or family.levels)
    return ArtifactSpec(model_config, levels, tuple(config["preprocess"]["image_size"]))


def load_artifact(
    directory: str | os.PathLike,
    *,
    pretrained: str | None | object = _FROM_ARTIFACT,
    map_location: str | torch.device = "cpu",
    check_backbone: bool = True,
) -> nn.Module:
    """Rebuild the model saved by ``save_artifact``.

    ``pretrained`` overrides where the backbone weights come from (e.g. the same
    weights file at another path on this machine); by default the artifact's own
    source is used. The backbone's fingerprint must match the one saved unless
    ``check_backbone=False``. The model is of the artifact's ``family`` (``qclip`` when
    absent: every artifact written before families existed).
    """
    root = Path(directory)
    config = read_artifact_config(root)
    family, model_cfg = _stored_settings(root, config)
    stored = tensors_file(root, config)
    try:  # before the model is built: a damaged file fails in a second
        tensors = load_file(str(stored))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"{stored} is unreadable: {exc}") from exc
    _check_finite(tensors, str(stored))
    if pretrained is not _FROM_ARTIFACT:
        model_cfg["pretrained"] = pretrained
    elif model_cfg.get("pretrained") and (root / model_cfg["pretrained"]).is_file():
        model_cfg["pretrained"] = str((root / model_cfg["pretrained"]).resolve())  # a file the artifact carries
    try:
        with weights_loaded_after() if family.stores_every_tensor else contextlib.nullcontext():
            model = family.create(**family.loading_config(model_cfg))
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{root / CONFIG_FILE}: invalid model settings: {exc}") from exc

    if check_backbone:
        expected = config["backbone"].get("fingerprint")
        actual = backbone_fingerprint(model)
        if expected != actual:
            raise ArtifactError(
                f"the backbone built from {model_cfg['pretrained']!r} is not the one {root} was trained on "
                "(weights fingerprint differs). Pass the same weights (load_artifact(..., pretrained=PATH)); "
                "a random-init backbone must be rebuilt with the same torch/open_clip versions "
                f"(saved with {config.get('versions')})."
            )

    _check_finite(model.rebuilt_state(), f"the backbone built from {model_cfg['pretrained']!r}")
    try:
        model.load_artifact_tensors(tensors)
    except ValueError as exc:
        raise ArtifactError(f"{stored}: {exc}") from exc
    if config.get("mode") == "zero_shot":
        model.zero_shot = True
    model.calibration = config.get("calibration")
    return model.to(map_location).eval()
