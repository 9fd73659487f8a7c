"""dslc: compile ADOPTER-style rule packs and apply them to PyTorch model source.

Stages (docs/design.md): `dslc.lang` (rule language front end) -> `dslc.match`
(IR, compiler, matcher) -> `dslc.analysis` (model structures) ->
`dslc.rewrite` (safety, edits, rewrite kinds) -> `dslc.apply` (driver, report,
file I/O) and `dslc.verify` (equivalence).
"""

import importlib.machinery as _machinery
import os as _os
import sys as _sys

__version__ = "0.1.0"

# Installed, `analysis/` and `grammar/` live inside the package as
# `dslc.analysis` and `dslc.grammar` (setup.cfg's package_dir).  In a source
# checkout they sit beside `dslc/`; this finder maps exactly those two names
# (and their submodules) there, so nothing else of the checkout root becomes
# part of the package.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
_CHECKOUT = {
    f"{__name__}.{name}": _os.path.join(_root, name)
    for name in ("analysis", "grammar")
    if not _os.path.isdir(_os.path.join(_here, name)) and _os.path.isfile(_os.path.join(_root, name, "__init__.py"))
}


class _CheckoutFinder:
    """Find `dslc.analysis` / `dslc.grammar` beside `dslc/` in a checkout."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        folder = _CHECKOUT.get(fullname)
        if folder is None:
            return None
        return _machinery.PathFinder.find_spec(fullname, [_os.path.dirname(folder)]) or None


# First in line: an editable install of another checkout maps these names too,
# and the checkout whose `dslc` was imported must win.
if _CHECKOUT and not any(isinstance(f, type) and f.__name__ == "_CheckoutFinder" for f in _sys.meta_path):
    _sys.meta_path.insert(0, _CheckoutFinder)
