"""The README's first command: the offline demo runs and labels its scores honestly."""

from train import demo


def test_demo_runs_offline_and_says_the_backbone_is_random(capsys):
    demo.main([])
    out = capsys.readouterr().out
    assert "RANDOM-INIT" in out and "not a quality measurement" in out
    assert "identical score = True" in out
    assert "zero-shot" in out and "untrained adapters" in out


def test_generated_clip_has_its_noise_burst_in_the_middle_third():
    clip = demo.generated_clip(30, 32, 48)
    assert clip.shape == (30, 32, 48, 3) and clip.dtype.name == "uint8"
    diffs = [float(((clip[t + 1].astype(int) - clip[t]) ** 2).mean()) for t in range(29)]
    calm, burst = max(diffs[:9]), min(diffs[10:19])
    assert burst > 10 * calm
