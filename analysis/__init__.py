"""Program analysis of PyTorch model source (paper §3.2). Never imports `dslc`.

Public API (docs/design.md, docs/analysis.md):

* `analyze_source(source, path, *, module=None, root=None, inline=True,
  flatten=False, want=None) -> FileFacts`
* `analyze_file(path, *, root=None, ...) -> FileFacts`
* `analyze_paths(paths, *, root=None, jobs=1, cache_dir=None, want=None, ...)
  -> list[FileFacts]`
* `guards`: `consistent`, `equivalent`, `Answer`
"""

from . import guards
from .api import analysis_version, analyze_file, analyze_paths, analyze_source
from .guards import Answer

__all__ = ["analyze_source", "analyze_file", "analyze_paths", "analysis_version", "guards", "Answer"]
