"""How the README test reads README.md (tests/support/readme.py), and what every example
of README.md must be, whether it runs here or not: no placeholder a shell reads as a
redirect, and a reason wherever one is not run."""

from __future__ import annotations

import re

import pytest

from tests.support import readme
from tests.support.services import ROOT

SAMPLE = '''
Text.

```bash
. .run/env   # comment
curl -s -d '{"a": 1,
     "b": 2}' \\
     $API_URL/v1/tasks
# → {"id": "3f0c…", "state": "PENDING", …}
TASK_ID=3f0c…   # the "id" it printed
# a description, not output
taskplane status $TASK_ID     # exits 4: not ended
taskplane submit x csv="a,b
1,2" --wait
# → error 422 validation_failed: …
#     data: 'data' is a required property
```

<!-- readme-test: skip needs a cluster -->
```bash
kubectl get pods
```

<!-- readme-test: server http://127.0.0.1:5555/healthcheck -->
```bash
flower --port=5555
```

```python
# pkg/mod.py
X = 1
```

```python
print("hi")
```

```mermaid
graph TD
```
'''


def test_the_reader_conventions() -> None:
    blocks = readme.blocks(SAMPLE)
    assert [(b.language, b.skip, b.server) for b in blocks] == [
        ("bash", None, None), ("bash", "needs a cluster", None),
        ("bash", None, "http://127.0.0.1:5555/healthcheck"), ("python", None, None),
        ("python", None, None)]
    steps = blocks[0].steps()
    assert [s.kind for s in steps] == ["command", "command", "fill", "command", "command"]
    assert steps[1].text.count("\n") == 2 and steps[1].text.endswith("$API_URL/v1/tasks")
    assert steps[1].sample == ['{"id": "3f0c…", "state": "PENDING", …}']
    assert steps[2].text == "TASK_ID"
    assert steps[3].exits == 4 and steps[3].sample == []
    assert steps[4].text.endswith('1,2" --wait') and steps[4].exits == 0
    assert steps[4].sample == ["error 422 validation_failed: …", "data: 'data' is a required property"]
    file_step, script = blocks[3].steps()[0], blocks[4].steps()[0]
    assert (file_step.kind, file_step.path) == ("file", "pkg/mod.py")
    assert script.kind == "python" and script.text == 'print("hi")\n'


def test_samples_and_errors_are_compared() -> None:
    (step,) = [s for s in readme.blocks(SAMPLE)[0].steps() if s.sample and s.kind == "command"
               and s.sample[0].startswith("{")]
    ok = '{"id": "9167b3e4-7774-41e9-913b-1b1a205917dc", "state": "PENDING", "x": 1}'
    assert readme.sample_mismatches(step, ok) == []
    assert readme.sample_mismatches(step, ok.replace("PENDING", "STARTED"))
    assert readme.first_task_id(ok) == "9167b3e4-7774-41e9-913b-1b1a205917dc"
    assert step.expected_error() is None
    assert readme.error_codes('{"error": {"code": "task_not_found", "message": "m"}}') == \
        ["task_not_found"]
    assert readme.error_codes('{"state": "FAILURE", "error": {"type": "BadImage"}}') == []
    text = readme.blocks(SAMPLE)[0].steps()[4]
    assert readme.sample_mismatches(
        text, "error 422 validation_failed: arguments do not match 'x'\n"
              "  data: 'data' is a required property\n") == []
    assert readme.sample_mismatches(text, "error 422 validation_failed: no field named\n")


def test_a_marker_without_a_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="without a reason or URL"):
        readme.blocks("<!-- readme-test: skip -->\n```bash\nls\n```\n")


README_BLOCKS = readme.read(ROOT / "README.md")
COMMANDS = [(b, s) for b in README_BLOCKS if b.language == "bash" for s in b.steps()
            if s.kind == "command"]


def unquoted(text: str) -> str:
    """``text`` without its quoted parts and comments: what the shell reads as syntax."""
    text = re.sub(r"'[^']*'", "''", text)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    comment = readme.trailing_comment(text)
    return text if comment is None else text[: text.index(comment)]


@pytest.mark.parametrize(("block", "step"), COMMANDS,
                         ids=[f"line{s.line}" for _, s in COMMANDS])
def test_no_placeholder_reads_as_a_redirect(block: readme.Block, step: readme.Step) -> None:
    """``<id>`` pasted into a shell is a redirect from a file named ``id``; README writes
    ``$TASK_ID`` (filled by a ``TASK_ID=…`` line) instead, skipped blocks included."""
    syntax = unquoted(step.text)
    assert not re.search(r"<[A-Za-z][\w-]*>", syntax), f"README.md:{step.line}: {step.text}"


def test_every_example_runs_or_says_why_not() -> None:
    assert len(README_BLOCKS) >= 10
    running = [b for b in README_BLOCKS if not b.skip]
    assert sum(len(b.steps()) for b in running) >= 30
    for b in README_BLOCKS:
        assert b.skip is None or len(b.skip) > 10, f"README.md:{b.line}: say why it is skipped"
