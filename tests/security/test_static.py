"""Static security analysis of the package with bandit: no medium or high finding.

Exceptions live in one file, ``bandit.yaml`` at the repository root, each with its
reason; inline ``# nosec`` is neither honoured nor allowed in ``services/``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.services import ROOT

pytestmark = pytest.mark.security

CONFIG = ROOT / "bandit.yaml"


def _bandit() -> str:
    found = Path(sys.executable).parent / "bandit"
    if found.exists():
        return str(found)
    other = shutil.which("bandit")
    if other is None:
        pytest.fail("bandit is not installed: pip install bandit (it is in the test extras)")
    return other


def test_bandit_finds_nothing_of_medium_or_high_severity() -> None:
    proc = subprocess.run(
        [_bandit(), "-r", "services", "-c", str(CONFIG), "-ll", "--ignore-nosec", "-f", "json",
         "-q"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip(), f"bandit printed nothing (exit {proc.returncode}):\n{proc.stderr}"
    report = json.loads(proc.stdout)
    assert not report["errors"], report["errors"]
    findings = [
        f"{r['test_id']} {r['issue_severity']}/{r['issue_confidence']} "
        f"{r['filename']}:{r['line_number']}: {r['issue_text']}"
        for r in report["results"]
    ]
    assert not findings, "bandit findings (fix them, or accept one in bandit.yaml with its " \
                         "reason):\n" + "\n".join(findings)
    assert proc.returncode == 0, proc.stderr
    assert report["metrics"]["_totals"]["loc"] > 1000, "bandit scanned (almost) nothing"


def test_every_exception_is_in_the_config_with_its_reason() -> None:
    text = CONFIG.read_text()
    config = yaml.safe_load(text) or {}
    for test_id in config.get("skips") or []:
        assert re.search(rf"^\s*#\s*{re.escape(test_id)}\b\s*:\s*\S", text, re.MULTILINE), (
            f"{test_id} is skipped in bandit.yaml without a '# {test_id}: <reason>' comment")
    inline = [f"{path.relative_to(ROOT)}:{n}"
              for path in sorted((ROOT / "services").rglob("*.py"))
              for n, line in enumerate(path.read_text().splitlines(), 1)
              if re.search(r"#.*\bnosec\b", line)]
    assert not inline, "inline '# nosec' (list the exception in bandit.yaml instead): " + \
        ", ".join(inline)
