"""Day-0 canary: a static check of every target an adapter needs, against a vLLM source tree.

    python -m tools.canary [PATH] [--adapter NAME] [--version X] [--cache-dir DIR]

PATH is an unpacked vLLM wheel or sdist, a git checkout (any directory containing `vllm/`), the `vllm/`
directory itself, or a wheel / sdist file (its `vllm/**/*.py` files are unpacked into the cache dir).
Without PATH the newest vLLM release on PyPI is downloaded (the upstream wheel, `pip download --no-deps`)
and only its Python files are unpacked. Nothing is imported from vLLM: every check reads the source with
`ast`. The adapter is the one `compat.choose()` picks for the tree's version (`vllm/_version.py`, else the
wheel's METADATA / the sdist's PKG-INFO), unless `--adapter` names one.

Each check prints one `ok` / `FAIL` line with the Location and the reason; the exit status is 1 if any
check failed (2 if the tree or the adapter cannot be determined at all).
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from vllm_tokens_patch import compat
from vllm_tokens_patch.adapters import Adapter, Location, RenderTarget, load

from . import ROOT
from .static_imports import Binding, Found, ModuleInfo, Tree, absolute_module, dotted_name, runtime_statements

__all__ = [
    "Check",
    "Tree",
    "choose_adapter",
    "main",
    "newest_release",
    "prepare_tree",
    "run_checks",
    "tree_version",
]

OLD_PREFIX = "vllm.entrypoints"
NEW_PREFIX = "vllm.frontend"
MOVE = "the vLLM frontend move (RFC #54653)"
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


# --- results --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    ok: bool
    what: str
    """Which adapter target (`route_hook`, `render_targets[0]`, ...)."""
    location: str
    reason: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.what:<18} {self.location}  -- {self.reason}"


# --- the vLLM frontend move -----------------------------------------------------------------------------


def moved(module: str) -> str | None:
    """Where RFC #54653 puts a `vllm.entrypoints` module (None for modules outside it)."""
    if module == OLD_PREFIX or module.startswith(OLD_PREFIX + "."):
        return NEW_PREFIX + module[len(OLD_PREFIX) :]
    return None


def _is_frontend(module: str | None) -> bool:
    return module is not None and (module == NEW_PREFIX or module.startswith(NEW_PREFIX + "."))


# --- the checks -----------------------------------------------------------------------------------------


def _describe(found: Found) -> str:
    where = f"{found.binding.kind} at {found.module.rel}:{found.binding.lineno}"
    if found.chain:
        return f"imported from {found.module.name}: {where}"
    return where


def _shim_target(info: ModuleInfo) -> str | None:
    """The `vllm.frontend` module a shim points to, if its text names one."""
    for node in ast.walk(info.tree):
        if isinstance(node, ast.ImportFrom):
            source = absolute_module(info.name, info.is_package, node)
            if _is_frontend(source):
                return source
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _is_frontend(alias.name):
                    return alias.name
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _is_frontend(node.value):
            return node.value
    return None


def _moved_reason(location: Location, new_module: str | None, detail: str) -> str:
    new = new_module or moved(location.module) or NEW_PREFIX
    return (
        f"{detail}: {location.module} moved to {new} ({MOVE}); the adapter still names the old path "
        f"and must name {new}:{location.qualname}"
    )


def _module_checks(tree: Tree, what: str, location: Location) -> tuple[ModuleInfo | None, Check | None]:
    """The module's file, and whether it is an alias shim; a FAIL check if either is wrong."""
    info = tree.module(location.module)
    if info is None:
        rel = location.module.replace(".", "/")
        new = moved(location.module)
        if new is not None and tree.module_file(new) is not None:
            return None, Check(
                False, what, str(location), _moved_reason(location, new, f"no {rel}.py or {rel}/__init__.py")
            )
        if tree.module_file(location.module) is not None:
            return None, Check(False, what, str(location), f"{rel} does not parse")
        return None, Check(False, what, str(location), f"module not found (no {rel}.py or {rel}/__init__.py)")
    if info.sys_modules_writes:
        lines = ", ".join(str(n) for n in info.sys_modules_writes)
        detail = f"{info.rel} is a sys.modules alias shim (assigns into sys.modules at line {lines})"
        return info, Check(False, what, str(location), _moved_reason(location, _shim_target(info), detail))
    return info, None


def _frontend_origin(tree: Tree, info: ModuleInfo, name: str) -> tuple[str, int] | None:
    """`name` comes into `info` from a `vllm.frontend` module (a re-export or a star import)."""
    binding = info.bindings.get(name)
    if binding is not None:
        if binding.kind == "import" and _is_frontend(binding.source):
            return binding.source or NEW_PREFIX, binding.lineno
        return None
    for star, lineno in info.stars:
        if _is_frontend(star):
            return star, lineno
    return None


def check_location(tree: Tree, what: str, location: Location) -> tuple[Check, Found | None, ast.stmt | None]:
    """That `location` resolves: module file, then the qualname (a class member may be inherited)."""
    info, failed = _module_checks(tree, what, location)
    if failed is not None or info is None:
        assert failed is not None
        return failed, None, None
    head, *rest = location.qualname.split(".")
    frontend = _frontend_origin(tree, info, head)
    if frontend is not None:
        detail = f"{info.rel}:{frontend[1]} re-exports {head} from {frontend[0]} without defining it"
        return Check(False, what, str(location), _moved_reason(location, frontend[0], detail)), None, None
    found = tree.resolve(location.module, head)
    if found is None:
        reason = f"{info.rel} has no module-level class, def, assignment or import named {head}"
        return Check(False, what, str(location), reason), None, None
    if any(_is_frontend(m) for m in found.chain) or _is_frontend(found.module.name):
        detail = f"{head} is defined in {found.module.name}"
        return (
            Check(False, what, str(location), _moved_reason(location, found.module.name, detail)),
            None,
            None,
        )
    if not rest:
        return Check(True, what, str(location), _describe(found)), found, None
    owner = found
    member: ast.stmt | None = None
    for index, part in enumerate(rest):
        node = owner.binding.node
        if not isinstance(node, ast.ClassDef):
            reason = f"{'.'.join([head, *rest[:index]])} is a {owner.binding.kind}, not a class"
            return Check(False, what, str(location), reason), None, None
        hit = tree.find_member(owner.module, node, part)
        if hit is None:
            reason = (
                f"class {node.name} ({owner.module.rel}:{node.lineno}) and its bases found in the tree "
                f"have no {part}"
            )
            return Check(False, what, str(location), reason), None, None
        member_info, member_cls, member = hit
        kind = _kind(member)
        owner = Found(member_info, Binding(kind, member, member.lineno), owner.chain)
        reason = f"{kind} at {member_info.rel}:{member.lineno}"
        if member_cls is not node:
            reason = f"{kind} inherited from {member_cls.name} ({member_info.rel}:{member.lineno})"
    return Check(True, what, str(location), reason), owner, member


def _kind(node: ast.stmt) -> str:
    if isinstance(node, ast.ClassDef):
        return "class"
    if isinstance(node, ast.AsyncFunctionDef):
        return "async def"
    return "def" if isinstance(node, ast.FunctionDef) else "assignment"


def _positional(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    return [a.arg for a in (*func.args.posonlyargs, *func.args.args)]


def check_render_target(tree: Tree, index: int, target: RenderTarget) -> list[Check]:
    what = f"render_targets[{index}]"
    located, _, member = check_location(tree, what, target.location)
    if not located.ok:
        return [located]
    loc = str(target.location)
    if not isinstance(member, _FUNCS):
        return [Check(False, what, loc, f"{target.location.attribute} is not a def ({located.reason})")]
    problems = []
    is_async = isinstance(member, ast.AsyncFunctionDef)
    if is_async != target.is_async:
        problems.append(
            f"is {'async def' if is_async else 'def'}, the adapter expects "
            f"{'async def' if target.is_async else 'def'}"
        )
    params = _positional(member)
    if len(params) < 2 or params[1] != "request":
        problems.append(
            f"first parameter after self is {params[1] if len(params) > 1 else 'absent'}, not request"
        )
    if target.explicit_messages:
        if len(params) < 4 or params[3] != "messages":
            shown = ", ".join(params[1:4])
            problems.append(f"positional parameters are ({shown}, ...), expected messages third after self")
        names = set(params) | {a.arg for a in member.args.kwonlyargs}
        for keyword in ("add_generation_prompt", "continue_final_message"):
            if keyword not in names:
                problems.append(f"has no {keyword} parameter")
    if problems:
        return [Check(False, what, loc, "; ".join(problems) + f" ({located.reason})")]
    shape = f"{'async ' if is_async else ''}({', '.join(params[:4])}{', ...' if len(params) > 4 else ''})"
    return [Check(True, what, loc, f"{shape}, {located.reason}")]


@dataclass(frozen=True)
class _Use:
    rel: str
    lineno: int
    function: str | None
    """The enclosing function (None: module level)."""
    module: str
    """The module the name was taken from."""

    def __str__(self) -> str:
        where = f" in {self.function}()" if self.function else " at module level"
        return f"{self.rel}:{self.lineno}{where}"


def _route_hook_uses(tree: Tree, hook: Location) -> tuple[list[_Use], list[_Use], list[_Use]]:
    """(call-time lookups of the hook, module-level copies of it, call-time lookups of a moved twin)."""
    attribute, module = hook.attribute, hook.module
    suffix = module[len(OLD_PREFIX) :] if moved(module) else "." + module.rpartition(".")[2]
    calls: list[_Use] = []
    copies: list[_Use] = []
    twins: list[_Use] = []

    def is_twin(source: str) -> bool:
        return source != module and (_is_frontend(source) and source.endswith(suffix))

    for path in tree.python_files():
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if attribute not in text:
            continue
        try:
            parsed = ast.parse(text, filename=str(path))
        except SyntaxError:
            continue
        name, is_package = tree.module_name(path)
        rel = path.relative_to(tree.root).as_posix()
        top_level = set(map(id, runtime_statements(parsed.body)))
        aliases: dict[str, str] = {}
        for node in ast.walk(parsed):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom):
                source = absolute_module(name, is_package, node)
                for alias in node.names:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        for stmt in runtime_statements(parsed.body):
            if isinstance(stmt, ast.ImportFrom) and id(stmt) in top_level:
                source = absolute_module(name, is_package, stmt)
                if (
                    name != module
                    and source == module
                    and any(a.name in {attribute, "*"} for a in stmt.names)
                ):
                    copies.append(_Use(rel, stmt.lineno, None, source))
        for func in ast.walk(parsed):
            if not isinstance(func, _FUNCS):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and any(a.name == attribute for a in node.names):
                    source = absolute_module(name, is_package, node)
                    if source == module:
                        calls.append(_Use(rel, node.lineno, func.name, source))
                    elif is_twin(source):
                        twins.append(_Use(rel, node.lineno, func.name, source))
                elif isinstance(node, ast.Attribute) and node.attr == attribute:
                    dotted = dotted_name(node.value)
                    if dotted is None:
                        continue
                    head, _, rest = dotted.partition(".")
                    target = aliases.get(head, head if name == module else "")
                    full = f"{target}.{rest}" if rest and target else target
                    if full == module:
                        calls.append(_Use(rel, node.lineno, func.name, module))
                    elif full and is_twin(full):
                        twins.append(_Use(rel, node.lineno, func.name, full))
                elif (
                    name == module
                    and isinstance(node, ast.Name)
                    and node.id == attribute
                    and isinstance(node.ctx, ast.Load)
                ):
                    calls.append(_Use(rel, node.lineno, func.name, module))
    return _dedupe(calls), _dedupe(copies), _dedupe(twins)


def _dedupe(uses: list[_Use]) -> list[_Use]:
    seen: dict[tuple[str, int], _Use] = {}
    for use in uses:
        seen.setdefault((use.rel, use.lineno), use)
    return list(seen.values())


def check_route_hook(tree: Tree, hook: Location) -> list[Check]:
    located, found, _ = check_location(tree, "route_hook", hook)
    checks = [located]
    if not located.ok:
        return checks
    if found is not None and found.binding.kind not in {"def", "async def"}:
        checks.append(Check(False, "route_hook", str(hook), f"is a {found.binding.kind}, not a function"))
    calls, copies, twins = _route_hook_uses(tree, hook)
    loc = str(hook)
    if twins:
        shown = "; ".join(f"from {t.module} import {hook.attribute} at {t}" for t in twins[:3])
        checks.append(
            Check(
                False,
                "route_hook",
                loc,
                f"vLLM looks {hook.attribute} up at call time from another module path: {shown}; "
                f"{hook.module} moved to {twins[0].module} ({MOVE}) and a hook on the old name never fires",
            )
        )
    if copies:
        shown = "; ".join(str(c) for c in copies[:3])
        checks.append(
            Check(
                False,
                "route_hook",
                loc,
                f"module-level `from {hook.module} import {hook.attribute}` in {shown}: that copy is "
                "bound before plugins load, so a patch of the module attribute is bypassed",
            )
        )
    if not calls:
        if not twins:
            checks.append(
                Check(
                    False,
                    "route_hook",
                    loc,
                    f"no function in the tree looks up {hook.attribute} from {hook.module} at call time "
                    f"(neither `from {hook.module} import {hook.attribute}` in a function body nor a call "
                    "through the module)",
                )
            )
    elif not twins and not copies:
        shown = "; ".join(str(c) for c in calls[:3])
        checks.append(
            Check(True, "route_hook", loc, f"looked up at call time ({shown}); no module-level copy")
        )
    return checks


def check_native_reuse(tree: Tree, adapter: Adapter) -> list[Check]:
    reuse = adapter.native_reuse
    if reuse is None:
        return []
    located, found, member = check_location(tree, "native_reuse", reuse)
    checks = [located]
    if located.ok:
        node = member if member is not None else found.binding.node if found else None
        if not isinstance(node, _FUNCS):
            checks[0] = Check(False, "native_reuse", str(reuse), f"is not a function ({located.reason})")
        else:
            params = _positional(node)
            first = params[1] if params[:1] == ["self"] and len(params) > 1 else (params or ["none"])[0]
            if first != "request":
                checks[0] = Check(
                    False, "native_reuse", str(reuse), f"first parameter is {first}, not request"
                )
            else:
                checks[0] = Check(
                    True, "native_reuse", str(reuse), f"({', '.join(params)}), {located.reason}"
                )
    base = tree.resolve(adapter.request_base.module, adapter.request_base.qualname.split(".")[0])
    if base is None or not isinstance(base.binding.node, ast.ClassDef):
        checks.append(Check(False, "request fields", str(adapter.request_base), "request class not found"))
        return checks
    fields = tree.fields(base.module, base.binding.node)
    needed = (adapter.fields.kv_transfer_params, adapter.fields.echo)  # the names this adapter declares
    missing = [name for name in needed if name not in fields]
    if missing:
        reason = (
            f"no annotated field {', '.join(missing)} in the class or its bases (the fast path needs them)"
        )
        checks.append(Check(False, "request fields", str(adapter.request_base), reason))
    else:
        checks.append(Check(True, "request fields", str(adapter.request_base), f"has {' and '.join(needed)}"))
    return checks


def run_checks(root: Path, adapter: Adapter) -> list[Check]:
    """Every check for `adapter` against the tree at `root` (a directory containing `vllm/`)."""
    tree = Tree(root)
    checks = check_route_hook(tree, adapter.route_hook)
    for what in ("chat_route", "json_validator", "request_base"):
        checks.append(check_location(tree, what, getattr(adapter, what))[0])
    for index, target in enumerate(adapter.render_targets):
        checks += check_render_target(tree, index, target)
    checks += check_native_reuse(tree, adapter)
    covered = {adapter.route_hook, adapter.chat_route, adapter.json_validator, adapter.request_base}
    covered |= {t.location for t in adapter.render_targets}
    if adapter.native_reuse is not None:
        covered.add(adapter.native_reuse)
    for what, location in _other_locations(adapter).items():
        if location not in covered:
            covered.add(location)
            checks.append(check_location(tree, what, location)[0])
    return checks


def _other_locations(adapter: Adapter) -> dict[str, Location]:
    """Locations the adapter declares beyond the ones checked above (e.g. a `length_check`): from its
    `targets()` if it has one, and every class attribute that is a `Location`."""
    found: dict[str, Location] = {}
    targets = getattr(adapter, "targets", None)
    if callable(targets):
        try:
            named = targets()
        except (AttributeError, NotImplementedError):  # an adapter that declares only part of them
            named = {}
        if isinstance(named, dict):
            found.update({str(k): v for k, v in named.items() if isinstance(v, Location)})
    for name in sorted(dir(type(adapter))):
        if not name.startswith("_"):
            value = getattr(type(adapter), name, None)
            if isinstance(value, Location):
                found.setdefault(name, value)
    return found


# --- the tree's version and adapter ---------------------------------------------------------------------


def tree_version(root: Path) -> tuple[str, str] | None:
    """(version, where it was read) from `vllm/_version.py`, else a METADATA / PKG-INFO next to `vllm/`."""
    version_file = root / "vllm" / "_version.py"
    if version_file.is_file():
        for node in ast.walk(ast.parse(version_file.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = {t.id for t in targets if isinstance(t, ast.Name)}
                value = node.value
                wanted = names & {"__version__", "version"}
                if wanted and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    return value.value, "vllm/_version.py"
    for meta in [*sorted(root.glob("*.dist-info/METADATA")), root / "PKG-INFO"]:
        if meta.is_file():
            match = re.search(r"^Version: *(\S+)", meta.read_text(encoding="utf-8"), re.MULTILINE)
            if match:
                return match.group(1), meta.relative_to(root).as_posix()
    return None


def choose_adapter(version: str, matrix: compat.Matrix) -> tuple[str | None, str]:
    choice = compat.choose(version, matrix)
    return choice.adapter, choice.reason


# --- getting a tree -------------------------------------------------------------------------------------


def _pip(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def release_versions(package: str, timeout: float = 120) -> list[str]:
    """Final releases of `package` on the index, newest first (`pip index versions`)."""
    result = _pip("index", "versions", package, timeout=timeout)
    match = re.search(r"^Available versions: *(.+)$", result.stdout, re.MULTILINE)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"pip index versions {package} failed: {result.stderr.strip()[-500:]}")
    versions = []
    for text in match.group(1).split(","):
        version = compat.parse_version(text.strip())
        if version == Version("0"):
            continue
        if not (version.is_prerelease or version.is_devrelease or version.is_postrelease or version.local):
            versions.append(version)
    return [str(v) for v in sorted(versions, reverse=True)]


def newest_release(package: str = "vllm") -> str:
    return release_versions(package)[0]


def download_wheel(package: str, version: str, dest: Path, timeout: float | None = None) -> Path:
    """`pip download --no-deps --only-binary=:all: package==version` into `dest` (reused if present)."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    existing = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if existing:
        return existing[0]
    result = _pip(
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{package}=={version}",
        "-d",
        str(dest),
        timeout=timeout,
    )
    wheels = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"pip download {package}=={version} failed: {result.stderr.strip()[-500:]}")
    return wheels[0]


def _wanted(member: str) -> bool:
    return (member.startswith("vllm/") and member.endswith(".py")) or (
        member.endswith((".dist-info/METADATA", "PKG-INFO")) and member.count("/") <= 1
    )


def unpack(archive: Path, dest: Path) -> Path:
    """The Python files of `vllm/` (and the metadata) of a wheel or sdist, into `dest`; returns `dest`."""
    marker = dest / ".unpacked"
    if marker.is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".whl" or zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as wheel:
            for member in wheel.namelist():
                if _wanted(member):
                    wheel.extract(member, dest)
    else:
        with tarfile.open(archive) as sdist:
            for entry in sdist.getmembers():
                inner = entry.name.partition("/")[2]  # vllm-X/vllm/... -> vllm/...
                if entry.isfile() and _wanted(inner) and ".." not in inner:
                    source = sdist.extractfile(entry)
                    if source is not None:
                        target = dest / inner
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(source.read())
    marker.write_text(archive.name)
    return dest


def prepare_tree(path: Path | None, cache: Path, log: bool = True) -> Path:
    """A directory containing `vllm/` for PATH (or the newest PyPI release when PATH is None)."""
    if path is None:
        version = newest_release("vllm")
        if log:
            print(f"canary: newest vLLM release on PyPI: {version}")
        wheel = download_wheel("vllm", version, cache / "wheels")
        return unpack(wheel, cache / "src" / wheel.stem)
    if path.is_file():
        name = path.name.removesuffix(".tar.gz").removesuffix(".whl")
        return unpack(path, cache / "src" / name)
    if (path / "vllm").is_dir():
        return path
    if path.name == "vllm" and (path / "__init__.py").is_file():
        return path.parent
    raise FileNotFoundError(f"{path} is neither a wheel, an sdist nor a directory containing vllm/")


def canary(root: Path, adapter_name: str | None, version: str | None, matrix: compat.Matrix) -> int:
    """Print the report for `root`; the exit status (0 all ok, 1 a FAIL, 2 nothing to check)."""
    if version is None:
        found = tree_version(root)
        if found is not None:
            version, source = found
            print(f"canary: vLLM {version} at {root} (version from {source})")
    if adapter_name is None:
        if version is None:
            print(f"FAIL  cannot tell the vLLM version of {root}: pass --version or --adapter")
            return 2
        adapter_name, reason = choose_adapter(version, matrix)
        print(f"canary: {reason}")
        if adapter_name is None:
            print(f"FAIL  no adapter for vLLM {version}")
            return 2
    else:
        print(f"canary: adapter {adapter_name} (given)")
    checks = run_checks(root, load(adapter_name))
    for check in checks:
        print(check.line())
    failed = sum(not c.ok for c in checks)
    print(f"canary: adapter {adapter_name}: {len(checks) - failed} ok, {failed} FAIL")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.canary",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "path", nargs="?", type=Path, help="vLLM tree, wheel or sdist (default: newest on PyPI)"
    )
    parser.add_argument("--adapter", help="check this adapter instead of the one the matrix picks")
    parser.add_argument("--version", help="treat the tree as this vLLM version (for git trees)")
    parser.add_argument("--matrix", type=Path, default=ROOT / "compat_matrix.yaml")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".nox" / "canary" / "tmp")
    args = parser.parse_args(argv)
    try:
        root = prepare_tree(args.path, args.cache_dir)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"FAIL  {exc}")
        return 2
    matrix = compat.parse_matrix(args.matrix.read_text(encoding="utf-8"))
    return canary(root, args.adapter, args.version, matrix)


if __name__ == "__main__":
    sys.exit(main())
