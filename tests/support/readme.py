"""README.md's examples as steps a test can run: its ```bash and ```python fences, read the
way a newcomer reads them.

The README stays written for people; the few conventions below are how it already reads:

* A shell fence is a series of commands. A command spans lines when a line ends with a
  backslash or a quote is still open (``-d '{... \\n ...}'``).
* ``# → ...`` right after a command is its sample output (``#   ...`` lines below it go
  on with it); other comment lines describe what follows and are not checked.
* ``NAME=…  # the "id" it printed`` (a value holding ``…`` or ``...``) is a placeholder the
  reader fills from the previous command's output: the runner puts the first task id
  (a UUID) that output holds.
* A command expects exit status 0, or ``N`` when its trailing comment says ``exits N``.
  Output holding the API's error envelope (``{"error": {"code": ...}}``) is a failure unless
  its sample output shows that envelope, and then the codes must agree.
* A Python fence is a script run with the shell's ``python3`` at that point; a fence whose
  first line is a path comment (``# myco/tasks.py``) is that file's content, written (or
  appended) there and imported.
* ``<!-- readme-test: skip REASON -->`` right before a fence leaves it out, saying why.
* ``<!-- readme-test: server URL -->`` marks a fence whose one command serves until
  Ctrl-C: the runner starts it, waits until ``URL`` answers 200, then stops it. It gets a
  free port in place of the one written (``--port=5555`` and the URL's), so it never meets
  a server already on this machine.

A fence in another language (a tree, a Mermaid diagram) is not an example.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FENCE = re.compile(r"^```(\S*)")
MARKER = re.compile(r"^<!--\s*readme-test:\s*(\w[\w-]*)\s*(.*?)\s*-->\s*$")
PLACEHOLDER = re.compile(r"^([A-Z][A-Z0-9_]*)=(\S*(?:…|\.\.\.)\S*)\s*(?:#.*)?$")
EXITS = re.compile(r"\bexits (\d+)\b")
FILE_HEADER = re.compile(r"^#\s*([\w./-]+\.py)\s*$")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: Sample output pairs the runner compares: ``"key": "text"`` or ``"key": 12``.
SAMPLE_PAIR = re.compile(r'"(\w+)":\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|true|false|null)(?=\s*[,}\]])')
EXAMPLE_LANGUAGES = {"bash", "sh", "shell", "python"}


@dataclass
class Step:
    """One thing a reader does: run a command, fill a placeholder, run or write Python."""

    kind: str  # "command" | "fill" | "python" | "file"
    text: str  # the command, the Python source, or the placeholder's name
    line: int  # where it starts in README.md (1-based)
    sample: list[str] = field(default_factory=list)  # sample output lines, "# " removed
    exits: int = 0
    path: str = ""  # kind "file": where the code goes
    literal: str = ""  # kind "fill": the value as written (what a hasty reader pastes)

    def expected_error(self) -> str | None:
        """The error code the sample output shows, if it shows the API's error envelope."""
        text = " ".join(self.sample)
        if not re.match(r'\{\s*"error":\s*\{', text):  # a task's own "error" is no envelope
            return None
        found = re.search(r'"code":\s*"([^"]+)"', text)
        return found.group(1) if found else ""


@dataclass
class Block:
    language: str
    line: int  # the opening fence's line
    body: list[str]
    skip: str | None = None  # the reason, when marked skip
    server: str | None = None  # the URL that answers once it serves, when marked server

    def steps(self) -> list[Step]:
        if self.language == "python":
            return [python_step(self.body, self.line + 1)]
        return shell_steps(self.body, self.line + 1)


def blocks(markdown: str) -> list[Block]:
    """Every example fence of ``markdown``, with its skip marker if it has one."""
    out: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        start, language = i, opening.group(1)
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if language not in EXAMPLE_LANGUAGES:
            continue
        block = Block("python" if language == "python" else "bash", start + 1, body)
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = MARKER.match(lines[before].strip()) if before >= 0 else None
        if marker:
            kind, argument = marker.groups()
            if kind not in ("skip", "server") or not argument:
                raise ValueError(f"README.md:{before + 1}: unknown marker, or one without a "
                                 f"reason or URL: {lines[before]!r}")
            if kind == "skip":
                block.skip = argument
            else:
                block.server = argument
        out.append(block)
    return out


def python_step(body: list[str], line: int) -> Step:
    header = FILE_HEADER.match(body[0]) if body else None
    if header:
        return Step("file", "\n".join(body) + "\n", line, path=header.group(1))
    return Step("python", "\n".join(body) + "\n", line)


def shell_steps(body: list[str], first_line: int) -> list[Step]:
    steps: list[Step] = []
    previous_was_command = in_sample = False
    i = 0
    while i < len(body):
        raw = body[i]
        stripped = raw.strip()
        if not stripped:
            previous_was_command = in_sample = False
            i += 1
            continue
        if stripped.startswith("#"):
            comment = stripped[1:].strip()
            if previous_was_command and comment.startswith("→"):
                steps[-1].sample.append(comment[1:].strip())
                in_sample = True
            elif in_sample and stripped.startswith("#  "):
                steps[-1].sample.append(comment)
            else:
                previous_was_command = in_sample = False
            i += 1
            continue
        in_sample = False
        start = i
        text = raw
        while continued(text) and i + 1 < len(body):
            i += 1
            text += "\n" + body[i]
        i += 1
        placeholder = PLACEHOLDER.match(text.strip())
        if placeholder:
            steps.append(Step("fill", placeholder.group(1), first_line + start,
                              literal=placeholder.group(2)))
            previous_was_command = False
            continue
        comment = trailing_comment(text)
        expected = EXITS.search(comment or "")
        steps.append(Step("command", text, first_line + start,
                          exits=int(expected.group(1)) if expected else 0))
        previous_was_command = True
    return steps


def _scan(text: str) -> tuple[str | None, int | None]:
    """The quote still open at the end of ``text`` (None if none), and where the first
    unquoted comment starts (None if none)."""
    quote: str | None = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote is None:
            if c == "\\":
                i += 2
                continue
            if c in "'\"":
                quote = c
            elif c == "#" and (i == 0 or text[i - 1] in " \t\n"):
                return None, i
        elif quote == '"' and c == "\\":
            i += 2
            continue
        elif c == quote:
            quote = None
        i += 1
    return quote, None


def continued(text: str) -> bool:
    """Whether the command goes on past this line: a quote open, or a final backslash."""
    quote, comment = _scan(text)
    if quote is not None:
        return True
    return comment is None and text.endswith("\\")  # a backslash in a comment continues nothing


def trailing_comment(text: str) -> str | None:
    _, comment = _scan(text)
    return None if comment is None else text[comment:]


def first_task_id(output: str) -> str | None:
    found = UUID.search(output)
    return found.group(0) if found else None


def error_codes(output: str) -> list[str]:
    """The codes of every API error envelope in ``output`` (a whole JSON document, or one
    a line), each once."""
    codes: list[str] = []
    for candidate in (output, *output.splitlines()):
        try:
            doc = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict) \
                and "code" in doc["error"] and str(doc["error"]["code"]) not in codes:
            codes.append(str(doc["error"]["code"]))
    return codes


def sample_mismatches(step: Step, output: str) -> list[str]:
    """Where the output disagrees with the sample under the command. A JSON sample
    (``{...}``) is compared pair by pair, for the pairs with a concrete value (``…``
    stands for any); a text sample's lines must appear in the output, ``…`` matching
    anything."""
    if not step.sample:
        return []
    joined = " ".join(step.sample)
    if joined.startswith("{"):
        try:
            actual: Any = json.loads(output)
        except ValueError:
            return [f"the sample is JSON, the output is not: {output[:300]!r}"]
        problems = []
        for key, raw in SAMPLE_PAIR.findall(joined):
            if "…" in raw:
                continue
            want = json.loads(raw)
            if want not in values_of(actual, key):
                problems.append(f"{key}: the sample shows {want!r}, the output has "
                                f"{values_of(actual, key) or 'no such key'}")
        return problems
    problems = []
    for line in step.sample:
        pattern = ".*".join(re.escape(part) for part in line.split("…"))
        if not re.search(pattern, output):
            problems.append(f"sample line not in the output: {line!r}")
    return problems


def values_of(doc: Any, key: str) -> list[Any]:
    """Every value ``key`` has anywhere in ``doc``."""
    found: list[Any] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == key:
                found.append(v)
            found.extend(values_of(v, key))
    elif isinstance(doc, list):
        for item in doc:
            found.extend(values_of(item, key))
    return found


def read(path: Path) -> list[Block]:
    return blocks(path.read_text())
