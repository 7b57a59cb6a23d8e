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
SCRIPTS = sorted(p.stem for p in (PACKAGE / "scripts").glob("*.lua") if p.stem not in store.LIBS)
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


def test_the_function_library_loads_and_holds_every_script(client: redis.Redis) -> None:
    name, code = store.library()
    assert name.startswith(store.LIBRARY_PREFIX) and code.startswith(f"#!lua name={name}\n")
    assert client.function_load(code, replace=True) == name.encode()
    (loaded,) = client.function_list(library=name)
    loaded = dict(zip(loaded[::2], loaded[1::2], strict=True))  # RESP2: a flat list
    functions = {dict(zip(f[::2], f[1::2], strict=True))[b"name"].decode()
                 for f in loaded[b"functions"]}
    assert functions == {store.function_name(s) for s in SCRIPTS}


def test_a_store_loads_the_library_where_redis_lost_it_and_falls_back_where_it_has_none(
        client: redis.Redis) -> None:
    """The first call on a Redis without the library (restarted without persistence, or
    never loaded) loads it and runs; a Redis that refuses functions (before 7.0, or an ACL)
    turns the store to EVALSHA, whose results are the same."""
    name = store.library()[0]
    client.function_flush()
    life = store.Store(client)
    assert life.run("take_token", ["test:bucket:fn"], [1, 5]) == life.run(
        "take_token", ["test:bucket:fn2"], [1, 5])
    assert life.functions and client.function_list(library=name)
    client.function_flush()
    # a user who may run scripts but not functions: as on a server before Redis 7
    client.acl_setuser("no-functions", enabled=True, nopass=True, keys=["*"],
                       commands=["+@all", "-fcall", "-function"])
    kwargs = client.connection_pool.connection_kwargs
    limited = redis.Redis(host=kwargs["host"], port=kwargs["port"], username="no-functions")
    try:
        client.script_flush()  # nor has it the script: NOPERM, then NOSCRIPT, then it runs
        eval_only = store.Store(limited)
        first = eval_only.run("take_token", ["test:bucket:ev"], [1, 5])
        assert not eval_only.functions  # NOPERM on FCALL: EVALSHA from then on
        assert first == eval_only.run("take_token", ["test:bucket:ev2"], [1, 5])
        assert first == life.run("take_token", ["test:bucket:fn3"], [1, 5])
        assert client.function_list(library=name)  # life's store loaded it again
        # the same on the path that sends WAIT after the call (REDIS_MIN_REPLICAS_ACK > 0;
        # no replica here: a non-strict store logs the shortfall and answers)
        client.script_flush()
        waiting = store.Store(limited, acks=1, ack_timeout=0.05, strict=False)
        reply = waiting._run_acknowledged(store._Caller(waiting, "take_token"),
                                          ["test:bucket:ev3"], [1, 5])
        assert reply == first and not waiting.functions
    finally:
        limited.close()
        client.acl_deluser("no-functions")
        client.delete("test:bucket:fn", "test:bucket:fn2", "test:bucket:fn3", "test:bucket:ev",
                      "test:bucket:ev2", "test:bucket:ev3")


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
