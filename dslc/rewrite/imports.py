"""The import scheduler: what the kinds of rewrite request, emitted once per file.

A kind never writes an import itself (LibCST's `AddImportsVisitor` is the
model): it asks how the file spells a qualified name (`spell`: an existing
import or alias, else a new import line), for a guarded import of an
optional kernel (`guarded_import`), for a per-call dispatch helper
(`dispatch_helper`) or for the load_state_dict pre-hook helper
(`Plan.needs_hook`).  The requests go into the match's `Plan`; `accept`
takes those of an accepted match, and `header_edit` writes them all at the
end of the run:
1. The import groups are the runs of top-level import statements not
   separated by a blank line; the new imports join the group that imports
   torch (kernels are third-party packages like it), else the last group.
2. In a group sorted isort's way (`import x` lines, then `from x import y`
   lines, each by module), a new import goes where it sorts; in an unsorted
   group, or for a multi-statement block, at the group's end.
3. The hook helper and the dispatch helpers go after the last top-level
   import (after the docstring and `__future__` imports of a file without
   imports).
Checkpoint names: a rule's non-identity `params` mappings register the
pre-hook (`hook_registration`), whose helper is emitted once per file.
"""

from __future__ import annotations

import ast

from dslc import codes
from dslc.fileio import source_lines
from dslc.match import ir
from dslc.rewrite.astutil import fresh_name
from dslc.rewrite.edits import Edit
from dslc.rewrite.plan import Plan, Skip

HOOK_HELPER = "_dslc_remap_state_dict"


class ImportScheduler:
    """Imports, helpers and the hook that the accepted matches of one file requested."""

    def __init__(self, mod, facts):
        self.mod = mod
        self.facts = facts
        self.spelled: dict[str, str] = {}  # qualname -> spelling
        self.import_lines: list[str] = []
        self.needs_hook = HOOK_HELPER in mod.all_names
        self.hook_present = self.needs_hook
        self.helper_defs: dict[str, str] = {}
        self._copy_names: dict[str, str] | None = None

    def accept(self, plan: Plan) -> None:
        """Take the requests of an accepted match."""
        self.spelled.update(plan.imports)
        self.import_lines.extend(plan.import_lines)
        self.needs_hook = self.needs_hook or plan.needs_hook
        self.helper_defs.update(plan.helper_defs)

    def spell(self, qualname: str, plan: Plan) -> str:
        """How the file names `qualname`: an existing import or alias, else a new import."""
        if qualname in self.spelled:
            return self.spelled[qualname]
        if qualname in plan.imports:
            return plan.imports[qualname]
        imports = self.mod.imports
        for local, qual in sorted(imports.items()):
            if qual == qualname:
                plan.imports[qualname] = local
                return local
        if "." not in qualname:
            plan.imports[qualname] = qualname
            return qualname
        copy = self._copies().get(qualname)
        if copy is not None and copy not in imports:
            # a function of this file that is a copy of `qualname` (gemma's own
            # apply_rotary_pos_emb, word for word Llama's: analysis/copies.py)
            plan.imports[qualname] = copy
            return copy
        module, name = qualname.rsplit(".", 1)
        if module == getattr(self.facts, "module", None) and name not in imports and any(
                isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and st.name == name
                for st in self.mod.tree.body):
            # defined in this very file (transformers' modeling_llama calling its
            # own apply_rotary_pos_emb): its own name, not a self-import
            plan.imports[qualname] = name
            return name
        for local, qual in sorted(imports.items()):
            if qual == module:
                spelled = f"{local}.{name}"
                plan.imports[qualname] = spelled
                return spelled
        taken = self.mod.all_names | {s.split(".")[0] for s in self.spelled.values()} | {s.split(".")[0] for s in plan.imports.values()}
        if name not in taken:
            plan.imports[qualname] = name
            plan.import_lines.append(f"from {module} import {name}")
            return name
        root = module.split(".")[0]
        if root in imports and imports[root] != root:
            raise Skip(codes.S_IMPORT_CLASH, f"cannot import `{qualname}`: `{name}` and `{root}` are both taken in this file")
        plan.imports[qualname] = qualname
        if imports.get(root) != root or module != root:
            plan.import_lines.append(f"import {module}")
        return qualname

    def _copies(self) -> dict[str, str]:
        """Canonical qualified name -> the function of this file that copies it."""
        if self._copy_names is None:
            from dslc.analysis.copies import copies

            found = copies(self.mod.tree, getattr(self.facts, "module", None) or "")
            self._copy_names = {canon: name for name, canon in found.items()}
        return self._copy_names

    def guarded_import(self, qualname: str, plan: Plan) -> str:
        """`try: from m import n / except ImportError: n = None` once per file; the local name."""
        if qualname in self.spelled:
            return self.spelled[qualname]
        if qualname in plan.imports:
            return plan.imports[qualname]
        if qualname in self.mod.guarded:  # written by an earlier run
            plan.imports[qualname] = self.mod.guarded[qualname]
            return self.mod.guarded[qualname]
        module, name = qualname.rsplit(".", 1)
        taken = self.mod.all_names | {v for v in self.spelled.values()} | set(plan.imports.values())
        local = name if name not in taken else fresh_name(f"_dslc_{name}", taken)
        alias = f" as {local}" if local != name else ""
        unit, nl = self.mod.block_unit, self.mod.nl
        plan.imports[qualname] = local
        plan.import_lines.append(f"try:{nl}{unit}from {module} import {name}{alias}{nl}"
                                 f"except Exception:  # optional kernel (missing package, no Triton): the original code runs{nl}"
                                 f"{unit}{local} = None")
        return local

    def torch_module(self, plan: Plan) -> str:
        """How the file names the `torch` module (`import torch` added when it has none)."""
        for local, qual in sorted(self.mod.imports.items()):
            if qual == "torch":
                return local
        if "torch" in self.mod.all_names:
            raise Skip(codes.S_FALLBACK, "`torch` names something else in this file; the run-time check needs the torch module")
        if "import torch" not in plan.import_lines and "import torch" not in self.import_lines:
            plan.import_lines.append("import torch")
        return "torch"

    def same_function(self, name: str, text: str) -> bool:
        """Is the module-level function `name` of the file `text` (same code)?"""
        fn = self.mod.functions.get(name)
        if fn is None:
            return False
        try:
            new = ast.parse(text).body[0]
        except SyntaxError:
            return False
        return ast.dump(fn) == ast.dump(new)

    def dispatch_helper(self, base: str, body: str, plan: Plan) -> str:
        """The name of the module-level helper `def <name><body>`: `base`, or
        `base_2`, ... when that name is taken; a helper with the same code
        (generated earlier in this run, or written by an earlier run) is reused."""
        defs = {**self.helper_defs, **plan.helper_defs}
        helper, n = base, 1
        while True:
            if defs.get(helper) == f"def {helper}{body}":
                break  # the same helper, already generated
            if helper not in defs and self.same_function(helper, f"def {helper}{body}"):
                break  # written by an earlier run
            if helper not in defs and helper not in self.mod.all_names:
                plan.helper_defs[helper] = f"def {helper}{body}"
                break
            n += 1
            helper = f"{base}_{n}"
        return helper

    def header_edit(self) -> list[Edit]:
        """New imports placed the way the file groups its imports, and the
        state-dict and dispatch helpers after the last top-level import (steps
        1-3 of the module docstring)."""
        mod = self.mod
        lines = list(dict.fromkeys(self.import_lines))
        helper = self.needs_hook and not self.hook_present
        if not lines and not helper and not self.helper_defs:
            return []
        nl = mod.nl
        if mod.last_import is not None:
            end_at = mod.smap.line_end(mod.last_import.end_lineno)
            end_prefix = "" if mod.ends_with_newline(mod.last_import.end_lineno) else nl
        else:
            end_at, end_prefix = self.top_of_file()
        inserts: dict[int, list[tuple[tuple, str]]] = {}
        groups = self.import_groups()
        group = next((g for g in groups if any(_import_top(n) == "torch" for n in g)), groups[-1] if groups else None)
        for line in lines:
            key = _import_key_of_text(line)
            at = None
            if group is not None and key is not None:
                keys = [_import_key(n) for n in group]
                if keys == sorted(keys):
                    after = next((n for n, k in zip(group, keys) if k > key), None)
                    if after is not None:
                        at = mod.smap.line_start(after.lineno)
                if at is None:
                    at = mod.smap.line_end(group[-1].end_lineno)
            if at is None:
                at = end_at
            inserts.setdefault(at, []).append((key or (2, ""), line))
        if helper:
            inserts.setdefault(end_at, [])
        edits = []
        for at, items in sorted(inserts.items()):
            text = "".join(line + nl for _, line in sorted(items, key=lambda kv: kv[0]))
            if at == end_at:
                text = end_prefix + text  # after a last line without its newline
                if helper:
                    text += nl + nl + _hook_helper(mod.unit, nl)
                for name in sorted(self.helper_defs):  # per-call dispatch helpers
                    text += nl + nl + self.helper_defs[name]
            edits.append(Edit(at, at, text))
        return edits

    def import_groups(self) -> list[list[ast.stmt]]:
        """Runs of top-level imports (not `__future__`) with no blank line between."""
        mod = self.mod
        rows = source_lines(mod.source)
        groups: list[list[ast.stmt]] = []
        cur: list[ast.stmt] = []
        for node in mod.tree.body:
            is_import = isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.module != "__future__")
            if not is_import:
                if cur:
                    groups.append(cur)
                    cur = []
                continue
            if cur and any(not rows[i].strip() for i in range(cur[-1].end_lineno, node.lineno - 1) if i < len(rows)):
                groups.append(cur)
                cur = []
            cur.append(node)
        if cur:
            groups.append(cur)
        return groups

    def top_of_file(self) -> tuple[int, str]:
        mod = self.mod
        body = mod.tree.body
        pos = 0
        for node in body:
            is_doc = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
            if (is_doc and node is body[0]) or is_future:
                pos = node.end_lineno
                continue
            break
        if pos == 0:
            return 0, ""
        prefix = "" if mod.ends_with_newline(pos) else mod.nl
        return mod.smap.line_end(pos), prefix


def _import_top(node: ast.stmt) -> str:
    if isinstance(node, ast.Import):
        return node.names[0].name.split(".")[0]
    return (node.module or "").split(".")[0] if not node.level else ""


def _import_key(node: ast.stmt) -> tuple:
    """isort's default order inside a section: `import x` lines, then `from x import`, by module."""
    if isinstance(node, ast.Import):
        return (0, node.names[0].name.lower())
    return (1, "." * node.level + (node.module or "").lower())


def _import_key_of_text(line: str) -> tuple | None:
    try:
        body = ast.parse(line).body
    except SyntaxError:
        return None
    if len(body) == 1 and isinstance(body[0], (ast.Import, ast.ImportFrom)):
        return _import_key(body[0])
    return None


def param_renames(rule: ir.Rule, new_attr, old_attr, keep=lambda var: False) -> list[tuple[str, str, bool]]:
    """The checkpoint renames of the rule's `params { $new.p <- $old.q; }` that
    are not identities: (new key, old key, keep the old key) per mapping.

    `new_attr` / `old_attr` map a variable to the attribute that holds its
    layer after / before the rewrite (None: unbound); `keep(var)` says the old
    layer stays, so its key must stay in the state dict too.
    """
    renames = []
    for pm in rule.params:
        new, old = new_attr(pm.target.base.name), old_attr(pm.source.base.name)
        if new is None or old is None:
            raise Skip(codes.S_TARGET, f"params mapping `{pm.target.base}.{pm.target.attr}` names an unbound variable")
        new_key, old_key = f"{new}.{pm.target.attr}", f"{old}.{pm.source.attr}"
        if new_key != old_key:
            renames.append((new_key, old_key, keep(pm.source.base.name)))
    return renames


def hook_registration(renames: list[tuple[str, str, bool]], unit: str) -> str:
    """The `__init__` statement registering the checkpoint-rename pre-hook;
    one (new key, old key, keep old) triple per line, for a readable diff."""
    items = "".join(f"{unit}({n!r}, {o!r}, {k}),\n" for n, o, k in renames)
    return f"self._register_load_state_dict_pre_hook({HOOK_HELPER}((\n{items})))"


def _hook_helper(unit: str, nl: str) -> str:
    lines = [
        f"def {HOOK_HELPER}(renames):",
        f'{unit}"""A load_state_dict pre-hook (added by `dslc apply`): load checkpoints saved before the rewrite."""',
        "",
        f"{unit}def hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):",
        f"{unit*2}for new, old, keep in renames:",
        f"{unit*3}if prefix + old in state_dict and prefix + new not in state_dict:",
        f"{unit*4}state_dict[prefix + new] = state_dict[prefix + old] if keep else state_dict.pop(prefix + old)",
        "",
        f"{unit}return hook",
        "",
    ]
    return nl.join(lines)
