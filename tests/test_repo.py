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
