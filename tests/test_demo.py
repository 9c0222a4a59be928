"""The README's first command, in its quick form: dataset → untrained metrics → training → report."""

from train import demo


def test_quick_demo_runs_offline_and_labels_its_numbers_honestly(tmp_path, capsys):
    demo.main(["--out", str(tmp_path / "demo"), "--quick", "--no-record"])
    out = capsys.readouterr().out
    assert "RANDOM-BACKBONE" in out and "not a measurement" in out
    assert "untrained (same init)" in out and "trained, last epoch" in out
    assert (tmp_path / "demo" / "run" / "best" / "adapters.safetensors").is_file()
