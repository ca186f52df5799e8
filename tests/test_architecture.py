"""The import graph flows one way: envs -> sources -> data -> models -> planning -> methods
-> training and evaluation -> experiment/CLI. A module may import its own layer, lower
layers and the shared utilities, never a higher layer (checked on every import,
function-level included), so each concept keeps one room and a new env, source, method or
planner cannot pull the rest of the library in behind it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UTILITIES = {"dicp_jax", "dicp_jax.config", "dicp_jax.rng", "dicp_jax.reporting",
             "dicp_jax.distributed"}
# (layer, module-name prefixes), lowest first
LAYERS = [
    ("envs", ("dicp_envs",)),
    ("sources", ("dicp_jax.sources",)),
    ("data", ("dicp_jax.history", "dicp_jax.data", "dicp_jax.collect",
              "dicp_jax.host.collect")),
    ("models", ("dicp_jax.codecs", "dicp_jax.model")),
    ("planning", ("dicp_jax.planning",)),
    ("methods", ("dicp_jax.methods",)),
    ("training", ("dicp_jax.validate", "dicp_jax.checkpoint", "dicp_jax.train")),
    ("evaluate", ("dicp_jax.evaluate", "dicp_jax.flops", "dicp_jax.host.evaluate")),
    ("experiment", ("dicp_jax.stages", "dicp_jax.results", "dicp_jax.experiment",
                    "dicp_jax.testing", "dicp_jax.commands", "dicp_jax.cli",
                    "dicp_jax.host")),  # the host package's docstring; its modules above
]


def layer_of(module: str) -> int | None:
    if module in UTILITIES:
        return None
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"module {module} has no layer: add it to LAYERS")


def modules() -> dict[str, Path]:
    out = {}
    for pkg, base in (("dicp_jax", ROOT / "dicp_jax"), ("dicp_envs", ROOT / "envs")):
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            name = ".".join((pkg, *parts)).removesuffix(".__init__")
            out[name] = path
    return out


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in ("dicp_jax", "dicp_envs")}


def back_edges(module: str, targets: set[str], known: set[str]) -> list[str]:
    """The imports of ``module`` that go up a layer (or from a utility into any layer)."""
    mine, found = layer_of(module), []
    for target in targets:
        # ``from pkg import name`` may name a submodule or an attribute: keep real modules
        while target not in known and "." in target:
            target = target.rsplit(".", 1)[0]
        theirs = layer_of(target)
        if theirs is not None and (mine is None or theirs > mine):
            found.append(f"{module} imports {target} ({LAYERS[theirs][0]})")
    return found


def test_the_check_sees_a_back_edge():
    known = set(modules())
    assert back_edges("dicp_jax.data", {"dicp_jax.model.DICPTransformer"}, known)
    assert back_edges("dicp_jax.config", {"dicp_jax.train"}, known)
    assert not back_edges("dicp_jax.train", {"dicp_jax.data.prepare", "dicp_envs"}, known)


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_import_goes_up_a_layer(module):
    known = modules()
    assert not back_edges(module, imports(known[module]), set(known))
