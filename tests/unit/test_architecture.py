"""The layers run one way (docs/architecture.md): any import cycle, between two modules or
between two of the project's packages, fails here. `lint-imports` (in .ci/run) checks the
layers' contracts in pyproject.toml; this test needs nothing but the code."""

from __future__ import annotations

import grimp
import pytest

PACKAGES = ("engine", "schemas", "consumers", "producers", "dossier", "deploy", "workflows")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back(graph: grimp.ImportGraph) -> None:
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert cycles(edges) == []


def test_the_packages_depend_on_each_other_one_way(graph: grimp.ImportGraph) -> None:
    edges = {
        a: {
            b
            for b in PACKAGES
            if a != b and graph.direct_import_exists(importer=a, imported=b, as_packages=True)
        }
        for a in PACKAGES
    }
    assert cycles(edges) == []
    assert "dossier" not in set().union(*(edges[p] for p in PACKAGES if p != "dossier"))


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
