"""README's Python example runs verbatim as a saved script."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_python_example_runs_as_a_saved_script(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- python-example -->\s*```python\n(.*?)```", readme, re.S)
    assert match, "README.md has no Python example under <!-- python-example -->"
    script = tmp_path / "example.py"
    script.write_text(match.group(1), encoding="utf-8")
    # A fresh interpreter, from the script's folder: what a user does. It must finish (no
    # worker processes re-importing the script) and write the run folder.
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "significant clusters" in done.stdout
    assert (tmp_path / "gpuale-example" / "run.json").is_file()
