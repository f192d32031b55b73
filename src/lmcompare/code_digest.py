"""The digest of the library code a rule's script runs: every rule's `code` param.

Snakemake reruns a job when its rule's script changes (the `code` rerun trigger), but it does not look at the
library the script imports. Each rule therefore passes `code=code_digest(script)`, a digest of the lmcompare
modules its script reaches through imports; the `params` trigger then reruns its jobs when that code changes, as it
reran them when the maths lived in the script. The scripts' shared job log (workflow_scripts/job.py, lmcompare.runtime)
is not followed: it computes nothing a table holds. Standard library only: the rule files call it at parse time.

Every Snakemake command parses the rule files, so the digests are cached on disk (`code_digest_cache()`: under
$XDG_CACHE_HOME or ~/.cache, lmcompare/code-digests.json), keyed by every library file's and the script's path,
size and modification time (the check Python's own bytecode cache makes). A cache hit costs the stat of the
library's files instead of parsing all of them (0.45 s of each command's start-up on this project's 2-core
machine); an edited file changes the key, and a cache that cannot be read or written is ignored.
"""

import ast
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent
CACHE_FORMAT = 1
CACHE_STATES = 8  # library states kept (a checkout and its copies, branches)


def _module_file(dotted: str) -> Path | None:
    """The source file of an lmcompare module (`lmcompare.a.b`), None for a name that is not a module."""
    parts = dotted.split(".")
    if parts[0] != "lmcompare":
        return None
    stem = LIBRARY.joinpath(*parts[1:])
    for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=None)
def _lazy_table(init: Path) -> dict:
    """A package's `_API` table (lmcompare/exports.py: name -> "module" or "module:attribute"), read from its
    source: `"name": "module"` entries and `**dict.fromkeys([names], "module")`."""
    table = {}
    for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_API" for t in node.targets):
            for key, value in zip(node.value.keys, node.value.values):
                if key is not None:
                    table[key.value] = value.value
                elif isinstance(value, ast.Call) and len(value.args) == 2:
                    for name in value.args[0].elts:
                        table[name.value] = value.args[1].value
    return table


def _files_of(name: str) -> set[Path]:
    """The module files an imported name stands for: the module and its parent packages, or, for a name a package
    re-exports on first use, the module its `_API` table names."""
    parts = name.split(".")
    files = set()
    for depth in range(1, len(parts) + 1):
        found = _module_file(".".join(parts[:depth]))
        if found is not None:
            files.add(found)
        elif depth == len(parts) and depth > 1:
            package = _module_file(".".join(parts[:-1]))
            target = _lazy_table(package).get(parts[-1]) if package and package.name == "__init__.py" else None
            if target:
                files.add(_module_file(".".join(parts[:-1] + [target.partition(":")[0]])))
    return files


def _package_of(path: Path) -> list[str]:
    """The dotted package a library file belongs to (a package's own `__init__.py` belongs to that package)."""
    parts = ["lmcompare", *path.relative_to(LIBRARY).with_suffix("").parts]
    return parts[:-1]


@functools.lru_cache(maxsize=None)
def _imported_modules(path: Path) -> frozenset[Path]:
    """The lmcompare modules a file imports (absolute and relative imports, names a package re-exports on first
    use), and their parent packages."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and path.is_relative_to(LIBRARY):
                package = _package_of(path)
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    files = set()
    for name in names:
        if name.split(".")[0] == "lmcompare":
            files |= _files_of(name)
    return frozenset(files)


def code_digest_cache() -> Path:
    """The file of cached digests (XDG cache folder)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmcompare" / "code-digests.json"


def _stamp(path: Path) -> list:
    status = path.stat()
    return [str(path), status.st_size, status.st_mtime_ns]


@functools.lru_cache(maxsize=None)
def _library_key() -> str:
    """A digest of every library file's path, size and modification time."""
    stamps = sorted(_stamp(path) for path in LIBRARY.rglob("*.py"))
    return hashlib.sha256(json.dumps([CACHE_FORMAT, stamps]).encode()).hexdigest()


def _read_cache() -> dict:
    """{library key: {script key: digest}} from the cache file; empty if it cannot be read."""
    try:
        stored = json.loads(code_digest_cache().read_text())
    except (OSError, ValueError):
        return {}
    return stored.get("libraries", {}) if isinstance(stored, dict) and stored.get("format") == CACHE_FORMAT else {}


@functools.lru_cache(maxsize=None)
def _cached_digests() -> dict:
    """{script key: digest} of the current library state (this process adds the digests it computes)."""
    return dict(_read_cache().get(_library_key(), {}))


def _store_digest(key: str, digest: str) -> None:
    """Add one digest to the cache file, which keeps the last CACHE_STATES library states (written whole and
    atomically, so concurrent commands lose at most an entry; skipped when it cannot be written)."""
    digests = _cached_digests()
    digests[key] = digest
    libraries = {k: v for k, v in _read_cache().items() if k != _library_key()}
    libraries = dict(list(libraries.items())[-(CACHE_STATES - 1):]) | {_library_key(): digests}
    cache = code_digest_cache()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, prefix=".code-digests.", delete=False) as tmp:
            json.dump({"format": CACHE_FORMAT, "libraries": libraries}, tmp)
        os.replace(tmp.name, cache)
    except OSError:
        pass


@functools.lru_cache(maxsize=None)
def code_digest(script: str) -> str:
    """sha256 (16 hex digits) over the lmcompare modules the script reaches through its imports, transitively,
    each by its path inside the library and its content (cached on disk, see the module docstring)."""
    key = json.dumps(_stamp(Path(script)))
    digest = _cached_digests().get(key)
    if digest is None:
        digest = _computed_digest(script)
        _store_digest(key, digest)
    return digest


def _computed_digest(script: str) -> str:
    seen, todo = set(), list(_imported_modules(Path(script)))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += list(_imported_modules(module))
    digest = hashlib.sha256()
    for module in sorted(seen):
        digest.update(module.relative_to(LIBRARY).as_posix().encode() + b"\0" + module.read_bytes())
    return digest.hexdigest()[:16]
