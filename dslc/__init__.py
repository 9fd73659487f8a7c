"""dslc: compile ADOPTER-style rule packs and apply them to PyTorch model source."""

import os as _os

__version__ = "0.1.0"

# Installed, `analysis/` and `grammar/` live inside the package as
# `dslc.analysis` and `dslc.grammar` (see setup.cfg's package_dir).  Run from a
# source checkout they sit beside `dslc/`; adding the checkout root to the
# package path makes `import dslc.analysis` find them there too.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "analysis")):
    _root = _os.path.dirname(_here)
    if _os.path.isfile(_os.path.join(_root, "analysis", "__init__.py")):
        __path__.append(_root)  # type: ignore[name-defined]
