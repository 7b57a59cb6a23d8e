"""One JSON Schema per registered task type, for every body that names a task.

``GET /v1/task-types`` has always shown each task's argument schema; the request bodies
that name a task (``POST /v1/tasks``, the schedules, later workflow members) said only
"any array, any object". A fuzzer then never reached the happy path, and a generated
client could not type a task's arguments. :func:`task_spec_schemas` turns the app's own
registry into a ``oneOf`` of one schema per task, chosen by a ``discriminator`` on
``task``, so a deployment with its own ``TASK_MODULES`` describes its own tasks.

Each schema says exactly what the server accepts (``TaskSpec.argument_errors``): the
arguments are bound as the task function binds them, so a parameter may come in
``args`` (by position) or in ``kwargs`` (by name), never in both, and each required
parameter in one of them. ``args`` is a ``prefixItems`` tuple and ``kwargs`` an object
of the task's properties; the binding rule is a nested ``if``/``then``/``else``: when
``args`` reaches parameter ``i``, ``kwargs`` does not name it, otherwise ``kwargs`` names
every required parameter from ``i`` on.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from ..tasks.registry import TaskSpec

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
#: ``false`` spelled as an object: generators (openapi-python-client) refuse boolean schemas.
NOTHING: dict[str, Any] = {"not": {}}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _parameter_schema(spec: TaskSpec, name: str) -> Any:
    """The schema a parameter's value meets: its property, else ``additionalProperties``
    (``False``, the registry's default, when the schema refuses any other name)."""
    properties = spec.schema.get("properties", {})
    return properties[name] if name in properties else spec.schema.get(
        "additionalProperties", False)


def positional_names(spec: TaskSpec) -> list[str]:
    """The parameters ``args`` may fill, in order: the function's positional ones, up to
    the first its schema refuses (no value can reach it, nor any after it)."""
    signature = spec.signature or inspect.signature(spec.func)
    names = []
    for parameter in signature.parameters.values():
        if parameter.kind not in _POSITIONAL or _parameter_schema(spec, parameter.name) \
                is False:
            break
        names.append(parameter.name)
    return names


def _keyword_schemas(spec: TaskSpec) -> dict[str, Any]:
    """The properties of ``kwargs``: the function's parameters that have a name to pass
    them by (not positional-only) and that the schema lets through. A ``**kwargs`` of the
    function is not described: the registry binds all its names as one argument, checked
    as a whole, which no per-name schema says."""
    signature = spec.signature or inspect.signature(spec.func)
    named = [p.name for p in signature.parameters.values()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                           inspect.Parameter.KEYWORD_ONLY)]
    return {name: _as_object(_parameter_schema(spec, name)) for name in named
            if _parameter_schema(spec, name) is not False}


def _as_object(schema: Any) -> Any:
    """``true`` as ``{}`` and ``false`` as :data:`NOTHING`, for generators; an array
    without ``items`` (any item, in JSON Schema) gets ``"items": {}``, which says the same
    and which client generators need (openapi-python-client drops the whole task's model
    otherwise)."""
    if schema is True:
        return {}
    if schema is False:
        return NOTHING
    return _explicit_items(schema)


#: Keywords whose value is data, not a schema: left as written.
_VALUES = frozenset({"const", "enum", "default", "examples"})


def _explicit_items(schema: Any) -> Any:
    """A copy of ``schema`` where every array schema names its items."""
    if isinstance(schema, list):
        return [_explicit_items(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _VALUES else _explicit_items(v) for k, v in schema.items()}
    kinds = out.get("type")
    if (kinds == "array" or (isinstance(kinds, list) and "array" in kinds)) \
            and "items" not in out:
        out["items"] = {}
    return out


def _need(names: list[str]) -> dict[str, Any]:
    """``kwargs`` must name each of ``names`` (nothing when there are none)."""
    return {"required": ["kwargs"], "properties": {"kwargs": {"required": names}}} \
        if names else {}


def _binding(required: list[str], positional: list[str], i: int = 0) -> dict[str, Any]:
    """From parameter ``i`` on: if ``args`` reaches it, ``kwargs`` must not name it (and
    the same holds for the next one); else ``kwargs`` names every required one left.

    Nested ``if``/``then``/``else`` rather than ``anyOf``: validators and fuzzers read it
    alike, and client generators, which build types from ``anyOf``/``oneOf``, skip it.
    """
    left = [name for name in required if name not in positional[:i]]
    if i == len(positional):
        return _need(left)
    reached = {"required": ["args"], "properties": {"args": {"minItems": i + 1}}}
    then = _binding(required, positional, i + 1)
    kwargs = then.setdefault("properties", {}).setdefault("kwargs", {})
    kwargs.setdefault("properties", {})[positional[i]] = NOTHING
    return {"if": reached, "then": then, "else": _need(left)}


def argument_schemas(spec: TaskSpec, component: str) -> tuple[dict[str, dict[str, Any]],
                                                               dict[str, Any], dict[str, Any]]:
    """The components ``<component>.args``/``<component>.kwargs`` of one task, the
    properties that name them, and the keywords binding the two (:func:`_binding`)."""
    required = list(spec.schema.get("required", ()))
    positional = positional_names(spec)
    # a positional-only parameter has no name to pass it by: requiring it by name (the
    # binding's "else") then leaves only the positional way, as Python does
    properties = _keyword_schemas(spec)
    args: dict[str, Any] = {
        "type": "array", "items": {}, "maxItems": len(positional),
        "description": "Positional arguments: " + (", ".join(positional) or "none") + "."}
    if positional:  # an empty prefixItems is not a schema
        args["prefixItems"] = [_as_object(_parameter_schema(spec, name)) for name in positional]
    kwargs: dict[str, Any] = {
        "type": "object", "additionalProperties": False, "properties": properties,
        "description": "Keyword arguments; each parameter by name or by position, not both."}
    if not positional and required:  # nothing can come by position: kwargs names them
        kwargs["required"] = required
    components = {f"{component}.args": args, f"{component}.kwargs": kwargs}
    props = {"args": ref(f"{component}.args"), "kwargs": ref(f"{component}.kwargs")}
    return components, props, _binding(required, positional) if positional else {}


def task_spec_schemas(registry: Iterable[TaskSpec], prefix: str,
                      options: Mapping[str, Any], *, required: Iterable[str] = (),
                      constraints: Mapping[str, Any] | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(components, union)`` for a body naming a task of ``registry``.

    ``components`` holds ``<prefix>.<task>`` for each task (its ``task`` a ``const``, its
    arguments, and ``options``: the body's other fields, e.g. queue and priority), plus the
    ``.args``/``.kwargs`` schemas they reference; ``union`` is the ``oneOf`` with its
    ``discriminator``, to put where the body's schema goes. ``required`` names more
    required fields and ``constraints`` adds keywords to every member (the schedules'
    "cron or every" ``not``).
    """
    components: dict[str, Any] = {}
    mapping: dict[str, str] = {}
    for spec in registry:
        name = f"{prefix}.{spec.name}"
        arg_components, arg_props, binding = argument_schemas(spec, name)
        components.update(arg_components)
        required_here = ["task", *required]
        if not binding and spec.schema.get("required"):
            required_here.append("kwargs")
        components[name] = {
            "type": "object", "additionalProperties": False, "required": required_here,
            "properties": {"task": {"type": "string", "const": spec.name,
                                    "description": spec.description.split("\n\n")[0]},
                           **arg_props, **options},
            **binding, **(constraints or {}),
        }
        mapping[spec.name] = ref(name)["$ref"]
    if not mapping:  # an empty oneOf is no schema: say that no body can name a task
        return components, {"not": {}, "description": "No task types are registered."}
    union = {"oneOf": [{"$ref": target} for target in mapping.values()],
             "discriminator": {"propertyName": "task", "mapping": mapping}}
    return components, union
