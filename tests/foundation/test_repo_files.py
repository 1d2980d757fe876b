"""What the README's commands leave in the repository, and what the main job prints."""

from __future__ import annotations

import re
from pathlib import Path

from ddnn.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_folders_the_readme_commands_create_are_ignored_by_git():
    ignored = (ROOT / ".gitignore").read_text().split()
    secure = re.findall(r"--secure (\S+?)/", (ROOT / "README.md").read_text())
    logs = build_parser().parse_args(["cluster", "--nodes", "1"]).logs
    assert secure and logs
    for folder in {*secure, logs}:
        assert f"/{folder}/" in ignored


def test_the_main_job_prints_the_evaluation_once_and_replaces_its_run_without_rm():
    lines = [x.strip() for x in (ROOT / "scripts" / "main.sh").read_text().splitlines()]
    commands = [x.split()[1] for x in lines if x.startswith("ddnn ")]
    assert "train" in commands and "evaluate" not in commands  # train prints the evaluation
    assert not any(x.startswith("rm ") for x in lines)
    assert any(x.startswith("ddnn train") and "--overwrite" in x for x in lines)
