"""The package's public face and the shape of its import graph."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_star_import_gives_every_public_name():
    done = subprocess.run([sys.executable, "-c", "from beam_curator import *\nimport beam_curator, "
                           "beam_curator.transforms as t\nassert set(t.__all__) <= set(beam_curator.__all__)\n"
                           "names = dir()\nprint(len([n for n in beam_curator.__all__ if n in names]))"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    import beam_curator

    assert int(done.stdout.split()[-1]) == len(beam_curator.__all__) >= 30


def _modules() -> dict[str, str]:
    """Module name -> file, for beam_curator (transforms/ as beam_curator.transforms)."""
    found = {}
    for top, package in (("beam_curator", "beam_curator"), ("transforms", "beam_curator.transforms")):
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            for name in names:
                if name.endswith(".py"):
                    relative = os.path.relpath(os.path.join(folder, name), os.path.join(ROOT, top))[:-3]
                    dotted = ".".join(part for part in relative.split(os.sep) if part != "__init__")
                    found[f"{package}.{dotted}".rstrip(".")] = os.path.join(folder, name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Every beam_curator module -> the beam_curator modules it imports (at the top or inside a function)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        with open(path) as handle:
            tree = ast.parse(handle.read())
        targets = set()
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            targets.update(name for name in names if name in modules and name != module)
        graph[module] = targets
    return graph


def test_no_import_cycle_and_few_layers():
    graph = import_graph()
    # Packages' __init__ re-export what is below them; a module importing a package is importing its parts.
    packages = {"beam_curator", "beam_curator.transforms"}
    edges = {module: {target for target in targets if target not in packages} for module, targets in graph.items()
             if module not in packages}
    depth: dict[str, int] = {}
    visiting: list[str] = []

    def layer(module: str) -> int:
        if module in visiting:
            raise AssertionError("import cycle: " + " -> ".join([*visiting[visiting.index(module):], module]))
        if module not in depth:
            visiting.append(module)
            depth[module] = 1 + max((layer(target) for target in edges.get(module, ())), default=0)
            visiting.pop()
        return depth[module]

    layers = max(layer(module) for module in edges)
    assert layers < 10, f"{layers} import layers"
