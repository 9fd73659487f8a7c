"""Loading the user's code (step 2 of `dslc.verify.equivalence`): the original
and the rewritten source as modules side by side, a `--factory` file, and
what a failure to import means (a skip, or a broken rewrite)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import itertools
import linecache
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from dslc.fileio import source_lines
from dslc.verify.report import REFERENCE_MARKER, VerifyUsageError
from dslc.verify.selection import all_rules, parsed


def read_text(path: str) -> str:
    """A source file's text exactly as `dslc apply` reads it (`fileio.read_source`:
    only a regular file, PEP 263 coding cookie, BOM); VerifyUsageError otherwise."""
    from dslc import fileio

    try:
        return fileio.read_source(path).text
    except fileio.SourceError as exc:
        where = f":{exc.line}" if exc.line else ""
        why = exc.message if exc.message.startswith("cannot read") else f"cannot read: {exc.message}"
        raise VerifyUsageError(f"{fileio.display_path(path)}{where}: {why} [{exc.code}]") from None


@dataclass
class Loaded:
    original: Any
    rewritten: Any
    registered: list[str] = field(default_factory=list)


def infer_module_name(path: str) -> tuple[str | None, str | None]:
    """(package, module) of a file, walking up while `__init__.py` exists.

    A file outside any package gives (None, None).
    """
    p = Path(path).resolve()
    parts = [p.stem]
    d = p.parent
    while (d / "__init__.py").exists():
        parts.append(d.name)
        d = d.parent
    if len(parts) == 1:
        return None, None
    dotted = ".".join(reversed(parts))
    return dotted.rpartition(".")[0], dotted


_COUNTER = itertools.count()


def _exec_module(source: str, name: str, package: str | None, filename: str) -> Any:
    spec = importlib.util.spec_from_loader(name, loader=None, origin=filename)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = package or ""
    module.__file__ = filename
    sys.modules[name] = module  # dataclasses and typing look modules up here
    # `@torch.jit.script` (and anything else using `inspect.getsource`)
    # re-reads a function's source by its code's file name: a rewrite held in
    # memory gets a name of its own, with its text in linecache, so that the
    # original file on disk is never read in its place.
    code_name = filename
    try:
        on_disk = read_text(filename)
    except VerifyUsageError:
        on_disk = None
    if on_disk != source:
        code_name = f"{filename}::dslc-{next(_COUNTER)}"
        linecache.cache[code_name] = (len(source), None, source_lines(source, keepends=True), code_name)
    try:
        exec(compile(source, code_name, "exec"), module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def user_exc(exc: BaseException) -> str:
    """What the user's code raised, in one line (`sys.exit(4)` for a SystemExit)."""
    if isinstance(exc, SystemExit):
        return f"it calls sys.exit({exc.code!r})"
    return one_line(exc)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


class SkipAll(Exception):
    """Every class is skipped for this reason."""


class Broken(Exception):
    """The rewritten file is broken: a failure."""


def _import_statements(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, without walking expressions
    (a file with a huge literal is walked in a few steps)."""
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            todo.extend(getattr(node, name, None) or ())


def _top_imports(source: str) -> set[str]:
    found: set[str] = set()
    try:
        tree = parsed(source)
    except SyntaxError:
        return found
    for node in _import_statements(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def install_hint(missing: str, packs: Iterable) -> str | None:
    """The pack's install hint for a missing module (by import name or package)."""
    top = missing.split(".")[0]
    for pack in packs:
        for req in getattr(pack, "requires", ()):
            names = {req.package, (req.module or req.package).split(".")[0], req.module or ""}
            if missing in names or top in names or any(missing.startswith(n + ".") for n in names if n):
                return req.install
    return None


def load_pair(orig_src: str, new_src: str, path: str, rewritten_path: str,
               module: str | None, packs: Sequence) -> Loaded:
    """Import ORIGINAL and load REWRITTEN next to it (see the module docstring, step 2)."""
    package, dotted = (module.rpartition(".")[0] or None, module) if module else infer_module_name(path)
    if package is None and _has_relative_imports(orig_src):
        package, dotted = _guess_transformers_module(path)
        if package is None:
            raise SkipAll("the file uses relative imports but is not inside a package: "
                        "pass --module with its dotted name (e.g. transformers.models.bert.modeling_bert)")
    registered: list[str] = []
    n = next(_COUNTER)
    stem = Path(path).stem
    extra_path = None
    if package:
        try:
            importlib.import_module(package)
        except Exception as exc:  # noqa: BLE001 - any import failure is a skip reason
            hint = ""
            if package.split(".")[0] == "transformers":
                hint = " (install transformers==4.35.0 to verify its modeling files)"
            raise SkipAll(f"package {package} not importable: {one_line(exc)}{hint}") from None
    else:
        extra_path = str(Path(path).resolve().parent)
        sys.path.insert(0, extra_path)
    try:
        original = None
        if dotted:
            try:
                mod = importlib.import_module(dotted)
                if Path(getattr(mod, "__file__", "") or "").is_file() and read_text(mod.__file__) == orig_src:
                    original = mod
            except (Exception, SystemExit):  # noqa: BLE001 - fall back to loading the given source
                original = None
        if original is None:
            name = f"{package}._dslc_original_{stem}_{n}" if package else f"_dslc_original_{stem}_{n}"
            try:
                original = _exec_module(orig_src, name, package, path)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - incl. sys.exit() at import
                raise SkipAll(f"the original does not import: {user_exc(exc)}") from None
            registered.append(name)
        name = f"{package}._dslc_rewritten_{stem}_{n}" if package else f"_dslc_rewritten_{stem}_{n}"
        try:
            rewritten = _exec_module(new_src, name, package, rewritten_path)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            top = missing.split(".")[0]
            hint = install_hint(missing, packs)
            newly = top and top not in _top_imports(orig_src) and top != (package or "").split(".")[0]
            if newly and (hint or not packs or _is_kernel_module(missing, packs)):
                how = f"; install: {hint}" if hint else ""
                raise SkipAll(f"kernel not installed: no module named {missing!r}{how}") from None
            raise Broken(f"the rewritten file does not import: {one_line(exc)}") from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - any import-time failure is the rewrite's, sys.exit too
            raise Broken(f"the rewritten file does not import: {user_exc(exc)}") from None
        registered.append(name)
        return Loaded(original, rewritten, registered)
    except BaseException:
        for mod_name in registered:  # no half-loaded pair left in sys.modules
            sys.modules.pop(mod_name, None)
        raise
    finally:
        if extra_path is not None:
            try:
                sys.path.remove(extra_path)
            except ValueError:
                pass


def _has_relative_imports(source: str) -> bool:
    try:
        return any(isinstance(n, ast.ImportFrom) and n.level for n in _import_statements(parsed(source)))
    except SyntaxError:
        return False


def _guess_transformers_module(path: str) -> tuple[str | None, str | None]:
    """A copied `modeling_xxx.py` belongs to `transformers.models.xxx` when that exists."""
    stem = Path(path).stem
    if not stem.startswith("modeling_"):
        return None, None
    package = f"transformers.models.{stem[len('modeling_'):]}"
    try:  # transformers' lazy modules have no __spec__ once imported
        found = package in sys.modules or importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        found = False
    return (package, f"{package}.{stem}") if found else (None, None)


def _is_kernel_module(missing: str, packs: Sequence) -> bool:
    return any(k == missing or k.startswith(missing + ".") for r in all_rules(packs) for k in r.kernels)


def reference_kernels(module: Any) -> tuple[str, ...]:
    """Top-level packages used by `module` that mark themselves as reference kernels."""
    found = set()
    for value in vars(module).values():
        mod_name = getattr(value, "__module__", None) if not inspect.ismodule(value) else value.__name__
        if not isinstance(mod_name, str):
            continue
        top = sys.modules.get(mod_name.split(".")[0])
        if top is not None and getattr(top, REFERENCE_MARKER, False):
            found.add(top.__name__)
    return tuple(sorted(found))


def load_factory(spec: str) -> Any:
    file, sep, func = spec.rpartition(":")
    if not sep or not file or not func:
        raise VerifyUsageError(f"--factory {spec!r}: expected FILE.py:FUNC")
    if not os.path.isfile(file):  # Path.is_file() raises behind a folder that cannot be searched
        from dslc.fileio import NO_SUCH_PATH, path_reason

        why = path_reason(file)
        raise VerifyUsageError(f"--factory {spec!r}: " + (f"no such file {file}" if why in (None, NO_SUCH_PATH)
                                                           else f"{file}: {why}"))
    name = f"_dslc_factory_{Path(file).stem}_{next(_COUNTER)}"
    parent = str(Path(file).resolve().parent)
    sys.path.insert(0, parent)
    try:
        module = _exec_module(read_text(file), name, None, file)
    except VerifyUsageError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - sys.exit() at import too
        raise VerifyUsageError(f"--factory {spec!r}: {file} does not import: {user_exc(exc)}") from None
    finally:
        sys.path.remove(parent)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise VerifyUsageError(f"--factory {spec!r}: {file} defines no function {func}")
    return fn
