"""Who may import whom (DESIGN.md, "Who may import whom"), checked by reading the imports.

Pure and fast: every module of shared/, services/ and vidmesh/ is parsed with `ast`, nothing is
imported or started. Each rule is one test, and a failure names the module and the line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "services", "vidmesh")
OUTSIDE_CODE = ("tests", "bench")


@dataclass(frozen=True)
class Module:
    name: str  # dotted, "shared.nats.kv"; a package is named by its folder
    path: Path
    tree: ast.Module = field(repr=False)

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def where(self) -> str:
        return str(self.path.relative_to(ROOT))


@dataclass(frozen=True)
class Import:
    source: Module
    target: str  # the module it reaches: a known module's name, else the name as written
    line: int
    names: tuple[str, ...] = ()  # what `from target import ...` takes from a module (not modules)

    def __str__(self) -> str:
        return f"{self.source.where}:{self.line} imports {self.target}"


@cache
def modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts)
            found[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return found


def _known(dotted: str) -> str:
    """The longest known module that `dotted` names or lies in; `dotted` itself if none."""
    parts = dotted.split(".")
    while parts:
        if ".".join(parts) in modules():
            return ".".join(parts)
        parts.pop()
    return dotted


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


@cache
def imports() -> tuple[Import, ...]:
    """Every import statement of every module, wherever it stands (top, function, TYPE_CHECKING):
    a circle is a circle even when a late import keeps Python from tripping over it."""
    found: list[Import] = []
    for module in modules().values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                found += [Import(module, _known(a.name), node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, node)
                taken = tuple(a.name for a in node.names if f"{base}.{a.name}" not in modules())
                found += [
                    Import(module, f"{base}.{a.name}", node.lineno)
                    for a in node.names
                    if f"{base}.{a.name}" in modules()
                ]
                if taken:
                    found.append(Import(module, _known(base), node.lineno, taken))
    return tuple(found)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _under(name: str, top: str) -> bool:
    return name == top or name.startswith(top + ".")


def import_graph(top: str) -> dict[str, set[str]]:
    """Which modules under `top` each module under `top` makes Python load: what it imports, and
    the packages those lie in (their `__init__` runs first), except its own enclosing packages,
    which are loading already when it runs."""
    graph: dict[str, set[str]] = {name: set() for name in modules() if _under(name, top)}
    for imp in imports():
        if imp.source.name not in graph or not _under(imp.target, top):
            continue
        own = _ancestors(imp.source.name)
        reached = {imp.target} if imp.names or imp.target not in own else set()
        reached |= {p for p in _ancestors(imp.target) if p in modules() and p not in own}
        graph[imp.source.name] |= reached - {imp.source.name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one node (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part: list[str] = []
            while not part or part[-1] != node:
                part.append(stack.pop())
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe(graph: dict[str, set[str]], part: list[str]) -> str:
    edges = [f"{a} -> {b}" for a in part for b in sorted(graph[a]) if b in part]
    return "; ".join(edges)


def concern_of(name: str) -> str:
    """shared's unit of concern: its package (`shared.nats`) or top-level module (`shared.wire`)."""
    parts = name.split(".")
    return ".".join(parts[:2])


def imports_from(top: str) -> Iterator[Import]:
    return (imp for imp in imports() if _under(imp.source.name, top))


# shared/


def test_shared_imports_no_service_and_nothing_of_the_cli_tests_or_benchmarks() -> None:
    wrong = [
        str(imp)
        for imp in imports_from("shared")
        if any(_under(imp.target, top) for top in ("services", "vidmesh", *OUTSIDE_CODE))
    ]
    assert wrong == []


def test_the_modules_of_shared_import_each_other_without_a_circle() -> None:
    graph = import_graph("shared")
    assert [_describe(graph, part) for part in circles(graph)] == []


def test_the_concerns_of_shared_depend_on_each_other_in_one_direction() -> None:
    """Packages (nats, jobs, blobs, media, messages, webhooks) and top-level modules (runtime,
    config, wire, ...) taken whole: no two of them need each other, however indirectly."""
    graph: dict[str, set[str]] = {}
    for name, targets in import_graph("shared").items():
        if name == "shared":
            continue
        graph.setdefault(concern_of(name), set()).update(
            concern_of(t) for t in targets if t != "shared" and concern_of(t) != concern_of(name)
        )
    assert [_describe(graph, part) for part in circles(graph)] == []


def test_the_media_layer_and_the_messages_do_not_import_each_other() -> None:
    """The messages carry media types (presets, probe results); the media layer names the leaf
    wire types (`shared.wire`) and never a message family."""
    wrong = [
        str(imp) for imp in imports_from("shared.media") if _under(imp.target, "shared.messages")
    ]
    assert wrong == []


def test_the_leaf_modules_of_shared_import_nothing_of_vidmesh() -> None:
    wrong = [
        str(imp)
        for leaf in ("shared.wire", "shared.tasks")
        for imp in imports_from(leaf)
        if any(_under(imp.target, top) for top in PACKAGES)
    ]
    assert wrong == []


# services/


def test_no_service_imports_another_service_or_the_cli() -> None:
    wrong = []
    for imp in imports_from("services"):
        own = ".".join(imp.source.name.split(".")[:2])
        if imp.source.name == "services":
            continue
        other_service = _under(imp.target, "services") and not _under(imp.target, own)
        if (other_service and imp.target != "services") or any(
            _under(imp.target, top) for top in ("vidmesh", *OUTSIDE_CODE)
        ):
            wrong.append(str(imp))
    assert wrong == []


FACES = "services.gateway.faces"


def test_no_face_of_the_gateway_imports_another_face() -> None:
    wrong = []
    for imp in imports_from(FACES):
        mine = imp.source.name.removeprefix(FACES + ".").split(".")[0]
        if imp.source.name == FACES or not _under(imp.target, FACES):
            continue
        theirs = imp.target.removeprefix(FACES + ".").split(".")[0]
        if imp.target != FACES and theirs != mine:
            wrong.append(str(imp))
    assert wrong == []


# What writes a job or rendition record: the record store, or a write on anything that holds such
# records: named for them (the buckets, the gateway's `job_records`) or typed for them.
RECORD_WRITERS = {"create_job", "change_job", "delete_job", "change_rendition", "delete_rendition"}
KV_WRITES = {"create", "put", "update", "change", "delete", "purge"}
RECORD_NAMES = {"jobs", "renditions", "job_records", "rendition_records"}
RECORD_TYPES = {"JobRecord", "Rendition"}
# The gateway's only handle on the jobs bucket besides its projection, and the type it must have.
GATEWAY_STATE = "services.gateway.state"
READ_ONLY = "ReadOnlyKV"


def _dotted(node: ast.expr) -> list[str]:
    """The names along `a.b.c` (or `a.b().c`), outermost last."""
    names: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Name):
            names.append(node.id)
            return names[::-1]
        else:
            return names[::-1]


def _mentions_records(node: ast.AST | None) -> bool:
    """Whether an annotation or a value names a record type (`TypedKV[JobRecord]`,
    `TypedKV(bucket, Rendition)`) or a records bucket (`buckets.jobs`)."""
    if node is None:
        return False
    for inner in ast.walk(node):
        if isinstance(inner, ast.Name) and inner.id in RECORD_TYPES:
            return True
        if isinstance(inner, ast.Attribute) and inner.attr in RECORD_TYPES | {"jobs", "renditions"}:
            return True
        if (  # a string annotation: "TypedKV[JobRecord]"
            isinstance(inner, ast.Constant)
            and isinstance(inner.value, str)
            and any(t in inner.value for t in RECORD_TYPES)
        ):
            return True
    return False


def _target_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _record_holders(tree: ast.AST) -> set[str]:
    """The names that hold job or rendition records in this module: the known ones, and every
    variable, attribute or argument annotated with or assigned something of those types."""
    names = set(RECORD_NAMES)
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and (
            _mentions_records(node.annotation) or _mentions_records(node.value)
        ):
            names.add(_target_name(node.target) or "")
        elif isinstance(node, ast.Assign) and _mentions_records(node.value):
            names.update(_target_name(t) or "" for t in node.targets)
        elif isinstance(node, ast.arg) and _mentions_records(node.annotation):
            names.add(node.arg)
    return names - {""}


def _record_writes(where: str, tree: ast.AST) -> Iterator[str]:
    holders = _record_holders(tree)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        method = node.func.attr
        receiver = _dotted(node.func.value)
        if method in RECORD_WRITERS or (method in KV_WRITES and holders & set(receiver)):
            yield f"{where}:{node.lineno} calls {'.'.join([*receiver, method])}()"


def test_no_gateway_module_writes_a_job_or_rendition_record() -> None:
    """Jobs enter through the scheduler: the gateway reads records from its projections and
    publishes commands; it neither holds the record store nor writes the jobs or renditions
    buckets."""
    wrong = [
        str(imp)
        for imp in imports_from("services.gateway")
        if _under(imp.target, "shared.jobs.store") or "RecordStore" in imp.names
    ]
    for module in modules().values():
        if _under(module.name, "services.gateway"):
            wrong += _record_writes(module.where, module.tree)
    assert wrong == []


def test_the_gateways_handle_on_job_records_can_only_read() -> None:
    """By construction: the gateway's `job_records` is typed as a read-only view, and that type
    has no method that writes."""
    state = modules()[GATEWAY_STATE].tree
    annotations = {
        node.target.id: ast.unparse(node.annotation)
        for node in ast.walk(state)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    assert annotations.get("job_records") == f"{READ_ONLY}[JobRecord]"
    (view,) = (
        node
        for node in ast.walk(modules()["shared.nats.kv"].tree)
        if isinstance(node, ast.ClassDef) and node.name == READ_ONLY
    )
    methods = {
        node.name
        for node in view.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and not node.name.startswith("_")
    }
    assert methods == {"get"}
    assert [ast.unparse(base) for base in view.bases] == ["Generic[T]"]


def test_the_reader_sees_a_record_write_by_any_name_that_holds_records() -> None:
    """The write rule is only as good as its reader: a write is found on a known name, on a
    variable typed or made for records, and through a projection's store."""
    planted = ast.parse(
        "async def handler(gw, kv: TypedKV[JobRecord], other: TypedKV[User]) -> None:\n"
        "    await gw.job_records.put('j', record)\n"
        "    await kv.delete('j')\n"
        "    await gw.jobs.store.update('j', record, 3)\n"
        "    mine = TypedKV(buckets.renditions, Rendition)\n"
        "    await mine.create('k', record)\n"
        "    await other.put('u', user)\n"
    )
    found = list(_record_writes("planted.py", planted))
    assert found == [
        "planted.py:2 calls gw.job_records.put()",
        "planted.py:3 calls kv.delete()",
        "planted.py:4 calls gw.jobs.store.update()",
        "planted.py:6 calls mine.create()",
    ]


# Configuration


# Who may touch os.environ besides the entry points, and why (none of them reads a setting).
ENVIRONMENT_EXCEPTIONS = {
    # The loader the entry points call: `load(cls)` with no mapping reads the environment.
    "shared/config.py",
    # Hands the process's environment to ffmpeg and sets the checking proxy for PyAV's nested
    # opens; both are the process environment of a child or a library, not configuration.
    "services/transcoder/service.py",
    "shared/media/inputs.py",
    # In-cluster discovery: KUBERNETES_SERVICE_HOST/PORT are set by Kubernetes in every pod.
    "services/gateway/kube.py",
}


def _is_entry_point(module: Module) -> bool:
    return module.where == "vidmesh/cli.py" or (
        module.name.startswith("services.") and module.path.name == "__main__.py"
    )


def _environment_reads(module: Module) -> Iterator[str]:
    for node in ast.walk(module.tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr in {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
        ):
            yield f"{module.where}:{node.lineno} uses os.{node.attr}"
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            for alias in node.names:
                if alias.name.startswith(("environ", "getenv")):
                    yield f"{module.where}:{node.lineno} imports os.{alias.name}"


def test_only_entry_points_read_the_environment() -> None:
    wrong = [
        found
        for module in modules().values()
        if not _is_entry_point(module) and module.where not in ENVIRONMENT_EXCEPTIONS
        for found in _environment_reads(module)
    ]
    assert wrong == []


# The reader itself


def test_the_reader_sees_a_circle_a_late_import_hides() -> None:
    """The rules are only as good as the reader: a circle through a package's `__init__` counts
    (and `imports()` reads every import statement, at the bottom of a file or in a function)."""
    graph = {"a.x": {"a.y"}, "a.y": {"a"}, "a": {"a.x"}}
    assert circles(graph) == [["a", "a.x", "a.y"]]
    assert circles({"a.x": {"a.y"}, "a.y": set()}) == []
