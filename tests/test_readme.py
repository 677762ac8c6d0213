"""The README's promises, kept: its example test passes as a user would run it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def test_the_plugin_examples_pass_in_a_project_of_their_own(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    examples = [b for b in python_blocks(readme) if "fsqr_server_factory" in b]
    assert len(examples) == 2  # a test PACS; fsqr as a test double
    for n, example in enumerate(examples):
        (tmp_path / f"test_example_{n}.py").write_text(example, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider"],
        cwd=tmp_path,  # another project: only the installed plugin gives it the fixture
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(examples)} passed" in done.stdout
