"""Preprocessing: ``reference`` frames are PIL's bilinear resize of the decoded RGB frame (the
official Q-CLIP transform), ``fast`` ones swscale's and measurably different; the engine, streams,
training and the export parity frames follow the model's ``config.preprocessing``; the device
decoder, which cannot resize as PIL does, is refused for ``reference`` (``auto`` takes the host)."""

import copy
import dataclasses
import json

import av
import numpy as np
import pytest
from PIL import Image
from conftest import tiny_model
from media import encode, moving_frames

from qclip_engine import save_artifact
from qclip_engine.engine import QualityEngine
from qclip_engine.samples import sample_clips
from qclip_engine.stream import stream_windows
from qclip_engine.video import decode, frames as frame_sources
from qclip_engine.video.resize import resize_rgb

SIZES = [(336, 336), (64, 96)]  # PE-Core-L's size, and a small non-square one


def plain_pyav_rgb(path, indices) -> np.ndarray:
    """The decoded frames ``indices`` (decode order = display order in these clean files) as RGB at
    native size, straight from PyAV: no code of the engine involved."""
    wanted, out = set(int(i) for i in indices), {}
    with av.open(str(path)) as container:
        for n, frame in enumerate(container.decode(video=0)):
            if n in wanted:
                out[n] = frame.to_ndarray(format="rgb24")
    return np.stack([out[int(i)] for i in indices])


def pil_bilinear(frames: np.ndarray, size) -> np.ndarray:
    """What the official transform does to each decoded frame: PIL ``Image.resize`` BILINEAR to (W, H)."""
    h, w = size
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames])


def max_abs(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def mean_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def backend_scores(engine, videos) -> np.ndarray:
    """The engine's backend on videos of frames made here (one call: the text tower runs once)."""
    return engine.backend.run(np.stack([np.ascontiguousarray(v) for v in videos]))[1]


def with_preprocessing(model, preprocessing):
    twin = copy.deepcopy(model)
    twin.config = dataclasses.replace(twin.config, preprocessing=preprocessing)
    return twin


@pytest.fixture(scope="module")
def clips():
    return sample_clips()


@pytest.fixture(scope="module")
def models():
    model = tiny_model()
    return {p: with_preprocessing(model, p) for p in ("fast", "reference")}


@pytest.mark.parametrize("size", SIZES)
def test_reference_frames_are_pil_bilinear_of_the_decoded_frame_and_fast_ones_are_not(clips, size):
    for path in clips:
        n = decode.probe(path).frame_count
        idx = np.linspace(0, n - 1, 5).round().astype(int)
        expected = pil_bilinear(plain_pyav_rgb(path, idx), size)
        reference = decode.decode_frames(path, size, indices=idx, preprocessing="reference")
        fast = decode.decode_frames(path, size, indices=idx, preprocessing="fast")
        assert reference.shape == fast.shape == expected.shape and reference.dtype == np.uint8
        assert max_abs(reference, expected) <= 1, path.name
        # The two paths really differ: on average and at edges (measured: ≈1–2 levels mean, 27–55 max).
        assert mean_abs(fast, expected) > 0.5 and max_abs(fast, expected) > 10, path.name
        # The default stays fast, and the streamed candidates carry the same preprocessing.
        assert np.array_equal(decode.decode_frames(path, size, indices=idx), fast)
        cands = decode.decode_candidates(path, size, max_frames=8, preprocessing="reference")
        assert max_abs(cands.frames, pil_bilinear(plain_pyav_rgb(path, cands.indices), size)) <= 1


def test_reference_keeps_the_display_orientation(tmp_path):
    # A portrait phone clip: coded 96×64 landscape, displayed turned 90°.
    coded = moving_frames(6, h=64, w=96, seed=2)
    path = encode(tmp_path / "rotated.mp4", coded, rotation=90)
    info = decode.probe(path)
    assert info.rotation in (90, 270) and (info.height, info.width) == (96, 64)
    upright = decode.decode_frames(path, None)  # the orientation path the decode tests check
    assert upright.shape[1:3] == (96, 64)
    size = (48, 40)
    reference = decode.decode_frames(path, size, preprocessing="reference")
    assert max_abs(reference, pil_bilinear(upright, size)) <= 1
    fast = decode.decode_frames(path, size)
    assert mean_abs(reference, fast) < 8  # same orientation (a turned frame would differ by far more)


def test_numpy_frames_are_resized_as_the_preprocessing_says():
    frames = moving_frames(2, h=120, w=160, seed=4)
    for f in frames:
        assert np.array_equal(resize_rgb(f, (64, 48), "reference"), pil_bilinear(f[None], (64, 48))[0])
        assert max_abs(resize_rgb(f, (64, 48), "fast"), pil_bilinear(f[None], (64, 48))[0]) > 1
    with pytest.raises(ValueError, match="preprocessing"):
        decode.decode_frames(sample_clips()[0], (32, 32), indices=[0], preprocessing="pil")


def torchvision_crop(frames: np.ndarray, short: int, size) -> np.ndarray:
    """CLIPVQA's test transform on each frame, by torchvision itself: ``Resize(short)`` (the short
    side, PIL bilinear) then ``CenterCrop(size)``."""
    from torchvision import transforms

    t = transforms.Compose([transforms.Resize(short, interpolation=transforms.InterpolationMode.BILINEAR),
                            transforms.CenterCrop(size)])
    return np.stack([np.asarray(t(Image.fromarray(f))) for f in frames])


@pytest.mark.parametrize("coded, rotation", [((64, 96), 0), ((96, 64), 0), ((64, 96), 90)])
def test_short_side_crop_is_torchvisions_resize_and_centre_crop_of_the_upright_frame(tmp_path, coded, rotation):
    path = encode(tmp_path / "clip.mp4", moving_frames(5, h=coded[0], w=coded[1], seed=3), rotation=rotation)
    upright = decode.decode_frames(path, None)
    for size, short in (((48, 48), 54), ((40, 40), 45)):  # short side 256/224 of the crop's, rounded down
        expected = torchvision_crop(upright, short, size)
        crop = decode.decode_frames(path, size, preprocessing="short_side_crop")
        assert crop.shape == expected.shape == (len(upright), *size, 3)
        assert max_abs(crop, expected) <= 1
        assert np.array_equal(resize_rgb(upright[0], size, "short_side_crop"), crop[0])
    # 224 → 256: the released CLIPVQA sizes.
    big = np.zeros((360, 640, 3), np.uint8)
    big[:, 300:340] = 255
    assert np.array_equal(resize_rgb(big, (224, 224), "short_side_crop"), torchvision_crop(big[None], 256, 224)[0])
    with pytest.raises(ValueError, match="square"):
        resize_rgb(big, (40, 56), "short_side_crop")


@pytest.mark.parametrize("sampler", ["uniform", "segment_mse_mean"])
def test_the_engine_feeds_the_model_frames_made_by_its_preprocessing(models, clips, sampler):
    size = models["fast"].image_size
    for preprocessing, model in models.items():
        engine = QualityEngine(model=model, engine="torch", precision="fp32", device="cpu", decoder="host", sampler=sampler, batch=1)
        assert engine.preprocessing == preprocessing
        for path in clips:
            sampled = engine.sample(path)
            expected = pil_bilinear(plain_pyav_rgb(path, sampled.indices), size)
            if preprocessing == "reference":
                assert max_abs(sampled.frames, expected) <= 1, path.name
            else:
                assert np.array_equal(sampled.frames, decode.decode_frames(path, size, indices=sampled.indices))
                assert max_abs(sampled.frames, expected) > 1, path.name


def test_an_artifact_is_scored_with_the_preprocessing_it_records(models, clips, tmp_path):
    artifact = save_artifact(models["reference"], tmp_path / "reference")
    assert json.loads((artifact / "config.json").read_text())["model"]["preprocessing"] == "reference"
    engine = QualityEngine(artifact, engine="torch", precision="fp32", device="cpu", decoder="host", batch=1)
    assert engine.preprocessing == "reference" and engine.source.preprocessing == "reference"
    model = engine.model
    results = list(engine.score(clips))
    frames = [pil_bilinear(plain_pyav_rgb(path, r.frames), model.image_size) for path, r in zip(clips, results)]
    np.testing.assert_allclose([r.score for r in results], backend_scores(engine, frames), atol=1e-5)
    # An explicit preprocessing overrides the artifact's (benchmarks compare the two this way).
    override = QualityEngine(model=model, engine="torch", precision="fp32", device="cpu", preprocessing="fast")
    assert override.source.preprocessing == "fast"
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        QualityEngine(model=model, engine="torch", precision="fp32", device="cpu", preprocessing="pil")


def test_the_device_decoder_refuses_reference_and_auto_takes_the_host(models, monkeypatch):
    reference = models["reference"]
    with pytest.raises(ValueError, match="decoder='device'.*'reference' preprocessing"):
        QualityEngine(model=reference, engine="torch", precision="fp32", device="cpu", decoder="device")
    with pytest.raises(ValueError, match="reference"):
        frame_sources.DeviceSource((64, 64), 4, device="cpu", preprocessing="reference")
    auto = QualityEngine(model=reference, engine="torch", precision="fp32", device="cpu")
    assert auto.source.name == "host" and "'reference' preprocessing" in auto.decoder_reason
    # Even where the device path would serve a CUDA backend, reference keeps to the host.
    monkeypatch.setattr("qclip_engine.video.decode_dali.why_unavailable", lambda: "")
    monkeypatch.setattr("qclip_engine.video.motion.kernel_available", lambda: True)
    assert frame_sources.device_path_unavailable("cuda:0", "fast") is None
    assert "PIL" in frame_sources.device_path_unavailable("cuda:0", "reference")
    assert "PIL" in frame_sources.device_path_unavailable("cuda:0", "short_side_crop")
    with pytest.raises(ValueError, match="short_side_crop"):
        frame_sources.DeviceSource((64, 64), 4, device="cpu", preprocessing="short_side_crop")
    # fast models keep the device decoder
    assert QualityEngine(model=models["fast"], engine="torch", precision="fp32", device="cpu", decoder="device").source.name == "device"


def test_stream_windows_are_made_by_the_engines_preprocessing(models, tmp_path):
    clip = encode(tmp_path / "clip.mp4", moving_frames(50, h=72, w=120, seed=6), options={"bf": "2", "g": "12"})
    size = models["fast"].image_size
    n = decode.probe(clip).frame_count
    native = plain_pyav_rgb(clip, range(n))
    by_reference = pil_bilinear(native, size)
    by_fast = decode.decode_frames(clip, size)
    for preprocessing, model in models.items():
        engine = QualityEngine(model=model, engine="torch", precision="fp32", device="cpu", batch=2)
        windows = list(stream_windows(engine, clip, window_s=1.0, hop_s=1.0))
        assert windows and all(w.score is not None for w in windows)
        mine, other = (by_reference, by_fast) if preprocessing == "reference" else (by_fast, by_reference)
        scores = np.array([w.score for w in windows])
        np.testing.assert_allclose(scores, backend_scores(engine, [mine[w.frames] for w in windows]), atol=1e-5)
        gaps = np.abs(scores - backend_scores(engine, [other[w.frames] for w in windows]))
        assert gaps.max() > 1e-4  # the other preprocessing's frames would score differently
        # RGB frames handed in at another size are resized the same way (fast: swscale from RGB).
        handed = native[:25]
        resized = (pil_bilinear(handed, size) if preprocessing == "reference"
                   else np.stack([resize_rgb(f, size, "fast") for f in handed]))
        plain = list(stream_windows(engine, list(handed), window_s=1.0, hop_s=1.0, fps=25))
        np.testing.assert_allclose([w.score for w in plain], backend_scores(engine, [resized[w.frames] for w in plain]),
                                   atol=1e-5)


def test_training_clips_follow_the_models_preprocessing(models, tmp_path):
    from train.datasets import build_datasets

    clip = encode(tmp_path / "clip.mp4", moving_frames(30, h=72, w=120, seed=7))
    size = models["fast"].image_size
    native = plain_pyav_rgb(clip, range(decode.probe(clip).frame_count))
    by_reference, by_fast = pil_bilinear(native, size), decode.decode_frames(clip, size)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,mos\n{clip},3.0\n{clip},4.0\n")
    config = {"seed": 0, "data": {"max_analysis_frames": 64, "train": {"labels": str(labels)},
                                  "val": {"val": {"labels": str(labels)}}}}
    for preprocessing, model in models.items():
        data = build_datasets(config, model)
        mine, other = (by_reference, by_fast) if preprocessing == "reference" else (by_fast, by_reference)
        for clips in (data.train, *data.val.values()):
            assert clips.preprocessing == preprocessing
            video = clips[0]["video"].numpy()
            assert video.shape == (model.config.num_frames, *size, 3)
            for frame in video:  # each frame the model gets is one of this preprocessing's, not the other's
                assert min(max_abs(frame, f) for f in mine) == 0
                assert min(max_abs(frame, f) for f in other) > 1


def test_export_parity_frames_follow_the_preprocessing(clips):
    from export.parity import parity_frames

    size = (48, 48)
    fast, _ = parity_frames(size, 2, clips[:1], count=1)
    reference, _ = parity_frames(size, 2, clips[:1], count=1, preprocessing="reference")
    n = decode.probe(clips[0]).frame_count
    idx = np.unique(np.linspace(0, n - 1, 2).round().astype(int))
    assert max_abs(reference[0], pil_bilinear(plain_pyav_rgb(clips[0], idx), size)) <= 1
    assert max_abs(fast[0], reference[0]) > 1
