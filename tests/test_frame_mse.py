"""frame_mse: the CPU reference against a brute-force float64 loop."""

import numpy as np
import pytest

from qclip_engine.video.frame_mse import frame_mse, neighbour_average, pair_mse


def brute_force(frames: np.ndarray) -> np.ndarray:
    t = len(frames)
    f = frames.astype(np.float64)

    def mse(a, b):
        return float(np.mean((f[a] - f[b]) ** 2))

    if t == 1:
        return np.zeros(1)
    out = np.empty(t)
    for i in range(t):
        if i == 0:
            out[i] = mse(0, 1)
        elif i == t - 1:
            out[i] = mse(t - 1, t - 2)
        else:
            out[i] = 0.5 * (mse(i, i + 1) + mse(i, i - 1))
    return out


@pytest.mark.parametrize("t", [1, 2, 3, 33, 70])  # 33 and 70 cross the internal chunk boundary
def test_matches_brute_force_float64(t):
    rng = np.random.default_rng(t)
    frames = rng.integers(0, 256, (t, 9, 17, 3), dtype=np.uint8)
    out = frame_mse(frames)
    assert out.dtype == np.float32 and out.shape == (t,)
    np.testing.assert_allclose(out, brute_force(frames), rtol=1e-7, atol=0)


def test_extreme_values_do_not_overflow():
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    frames[1] = 255
    np.testing.assert_array_equal(frame_mse(frames), [255.0**2] * 3)


def test_static_frames_have_zero_motion_and_torch_input_works():
    torch = pytest.importorskip("torch")
    frames = torch.full((5, 8, 8, 3), 77, dtype=torch.uint8)
    np.testing.assert_array_equal(frame_mse(frames), np.zeros(5, np.float32))


def test_neighbour_average_rule():
    np.testing.assert_allclose(neighbour_average([2.0, 4.0, 8.0]), [2.0, 3.0, 6.0, 8.0])
    np.testing.assert_allclose(neighbour_average([5.0]), [5.0, 5.0])
    np.testing.assert_allclose(pair_mse(np.zeros((1, 2, 2, 3), np.uint8)), np.zeros(0))


def test_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        frame_mse(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="at least one frame"):
        frame_mse(np.zeros((0, 4, 4, 3), np.uint8))
