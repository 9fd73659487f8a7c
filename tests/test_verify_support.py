"""Shared helpers for the verify tests (no tests here).

`kernel_refs` puts tests/kernel_refs (pure-PyTorch *reference* kernels, see its
README) on sys.path for one test and removes it, and every module imported
from it, afterwards, so that other tests see the kernels as absent.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from dslc.match import ir

REFS = Path(__file__).resolve().parent / "kernel_refs"
REF_PACKAGES = ("epoi", "slapo", "xformers")

EPOI_HINT = "pip install git+https://github.com/comaniac/epoi"


def _purge() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in REF_PACKAGES:
            mod = sys.modules[name]
            if str(getattr(mod, "__file__", "") or "").startswith(str(REFS)):
                del sys.modules[name]


@pytest.fixture
def kernel_refs():
    """Reference kernels importable for the duration of one test."""
    _purge()
    sys.path.insert(0, str(REFS))
    try:
        yield REFS
    finally:
        sys.path.remove(str(REFS))
        _purge()


@pytest.fixture
def no_kernels():
    """The reference kernels are not importable (a real install may still be)."""
    _purge()
    yield


def has_transformers() -> bool:
    return importlib.util.find_spec("transformers") is not None


def rule(name: str, kernel: str, *, exact: bool = False, atol: float = 1e-5, rtol: float = 1e-4,
         deterministic: bool = False, pack: str = "test") -> ir.Rule:
    """A hand-built rule: only the fields verify reads (kernels, contract)."""
    return ir.Rule(pack=pack, name=name, description=name, kernels=(kernel,),
                   contract=ir.Contract(exact=exact, atol=atol, rtol=rtol, deterministic=deterministic))


def pack(*rules: ir.Rule, requires: tuple[ir.Requirement, ...] = ()) -> ir.Pack:
    return ir.Pack(name="test", description="hand-built", requires=requires, rules=rules)


def epoi_requirement() -> ir.Requirement:
    return ir.Requirement(package="epoi", install=EPOI_HINT)


def edit(source: str, old: str, new: str) -> str:
    """Replace `old` by `new` exactly once in `source`."""
    if source.count(old) != 1:
        raise AssertionError(f"expected one occurrence of:\n{old}")
    return source.replace(old, new)


# A load_state_dict pre-hook factory that rewrites emit to keep checkpoints
# loading (design.md: "registers a load_state_dict pre-hook").
RENAME_HOOK = '''

def _dslc_rename(mapping):
    def hook(module, state_dict, prefix, *args):
        for old, new in mapping.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
    return hook
'''


def edit_in(source: str, cls: str, old: str, new: str) -> str:
    """`edit` restricted to the text of top-level class `cls`."""
    start = source.index(f"\nclass {cls}(") + 1
    end = source.find("\nclass ", start)
    end = len(source) if end < 0 else end
    return source[:start] + edit(source[start:end], old, new) + source[end:]


def add_import(source: str, text: str) -> str:
    """Insert `text` after the `from ...activations import` line of a modeling file."""
    start = source.index("\nfrom ...activations import") + 1
    end = source.index("\n", start) + 1
    return source[:end] + text + source[end:]
