"""The README's two commands are the ones users and CI actually run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README must open with a bash code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands_demo_then_tests():
    readme = (ROOT / "README.md").read_text()
    assert readme.index("```bash") < 200, "the commands come first"
    demo, tests = readme_commands()
    assert "-m train.demo" in demo and "HF_HUB_OFFLINE=1" in demo and "'.[demo]'" in demo
    assert "pytest" in tests and "HF_HUB_OFFLINE=1" in tests and "'.[dev]'" in tests
    for command in (demo, tests):
        assert "-c constraints.txt" in command


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_constraints_pin_the_documented_torch():
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_benchmark_results_name_inputs_relatively():
    """A result file is read on other machines: no absolute path of the one that wrote it."""
    import json

    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        absolute = [s for s in _strings(json.loads(path.read_text())) if s.startswith("/") or "site-packages" in s]
        assert not absolute, (path.name, absolute[:3])


def test_no_reference_to_documents_outside_the_repository():
    """Comments and docs cite files of this repository only."""
    trees = ("qclip_engine", "export", "kernels", "train", "benchmarks", "tests", "docs", "configs")
    files = [ROOT / "README.md", *(p for t in trees for p in (ROOT / t).rglob("*") if p.suffix in (".py", ".md", ".yaml", ".cu"))]
    cited = [p.relative_to(ROOT).as_posix() for p in files if "DESIGN" in p.read_text(errors="replace") and p.name != "test_repo.py"]
    assert not cited
