"""The layout of the lifecycle's scripts: each ``.lua`` file states its contract, binds its
keys and arguments by name before doing anything, and compiles; every script call goes
through ``Store.run``; nothing outside the package holds the lifecycle's Redis client."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import redis

from taskplane.lifecycle import store

PACKAGE = Path(store.__file__).parent
SCRIPTS = sorted(p.stem for p in (PACKAGE / "scripts").glob("*.lua") if p.stem != store.LIB)
SERVICES = PACKAGE.parent


def test_every_script_the_package_runs_is_a_file_and_every_file_is_run() -> None:
    named = set()
    for module in PACKAGE.glob("*.py"):
        named |= set(re.findall(r'run\(\s*"(\w+)"', module.read_text()))
    assert named == set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_opens_with_its_contract_and_binds_names_first(name: str) -> None:
    text = resources.files("taskplane.lifecycle").joinpath(f"scripts/{name}.lua").read_text()
    header = text.split("\n\n", 1)[0]
    assert header.startswith(f"-- {name}:"), "the first line names the script and says what it does"
    for part in ("KEYS", "ARGV", "Returns"):
        assert f"-- {part}" in header or f"{part} " in header, f"the contract names its {part}"
    lines = text.splitlines()
    first_call = next(i for i, line in enumerate(lines) if not line.startswith("--")
                      and ("redis.call" in line or "return" in line))
    late = [line for line in lines[first_call:] if "KEYS[" in line or "ARGV[" in line]
    assert not late, f"KEYS/ARGV used by position after the bindings: {late}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_compiles_with_the_shared_library(name: str, client: redis.Redis) -> None:
    assert len(client.script_load(store.source(name))) == 40


def test_only_the_store_registers_or_evaluates_scripts() -> None:
    for module in PACKAGE.glob("*.py"):
        if module.name != "store.py":
            text = module.read_text()
            assert "register_script" not in text and "evalsha" not in text, module.name


def test_no_module_outside_the_package_reaches_the_lifecycles_client() -> None:
    offenders = [str(p.relative_to(SERVICES)) for p in SERVICES.rglob("*.py")
                 if PACKAGE not in p.parents
                 and re.search(r"lifecycle\.(client|_store)|\blife\.(client|_store)", p.read_text())]
    assert offenders == []
