"""The import graph of the project's own packages, read from the source (every import statement, also the ones
inside functions): no two modules import each other, directly or through others, and imports run one way,
apps -> zoo -> l2o (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("l2o", "zoo", "fine_tune", "meta_train", "bench")
# what each package may import of the others (bench measures everything; the apps use zoo and l2o)
ALLOWED = {"l2o": set(), "zoo": {"l2o"}, "fine_tune": {"zoo", "l2o"}, "meta_train": {"zoo", "l2o"},
           "bench": {"fine_tune", "meta_train", "zoo", "l2o"}}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _targets(node, name: str, path: Path) -> list[str]:
    """The module names an import statement in module `name` refers to ("pkg.sub" when it names a submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = name.split(".")[: len(name.split(".")) - (0 if path.name == "__init__.py" else 1)]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    return [f"{base}.{a.name}" for a in node.names] + [base]


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = _targets(node, name, path)
            if isinstance(node, ast.ImportFrom):  # `from pkg import sub` is sub when sub is a module, else pkg
                named = [t for t in targets[:-1] if t in mods]
                targets = named if len(named) == len(targets) - 1 else named + [targets[-1]]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges[name].add(t)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_two_modules_import_each_other_directly_or_through_others():
    found = cycles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_run_one_way_apps_zoo_l2o():
    wrong = sorted(f"{m} imports {t}" for m, targets in graph().items() for t in targets
                   if t.split(".")[0] != m.split(".")[0] and t.split(".")[0] not in ALLOWED[m.split(".")[0]])
    assert not wrong, wrong


def test_the_checker_sees_a_circle_through_a_function_level_import(tmp_path):
    """The checker itself: a -> b at module level and b -> a inside a function is a circle; a chain is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    src = "def f():\n    from l2o.tasks import sources\n"
    node = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom))
    assert "l2o.tasks.sources" in _targets(node, "l2o.tasks.base", Path("base.py"))
