"""The kinds of rewrite, one class each, in the order the rewriter asks them.

For each match, `rewriter._Rewriter.plan` runs the shared checks (`Setup`)
and lets the first kind of `KINDS` that selects the match plan it:

- `CausalLMLoss`     `option causal_lm`: a causal LM's head and loss, fused in training (unsafe);
- `ClassDispatch`    a class item: a dispatch at the top of the class's forward;
- `NoneGuardedLayer` a removed layer `__init__` binds to `None` / `nn.Identity()`
                     on another branch (its call under `if self.<a> is not None:`, ...);
- `AcrossHelper`     the removed layer's call in a helper forward calls;
- `ZipContainers`    a chain of elements of `nn.ModuleList`s walked by one `zip` loop;
- `ContainerFusion`  layers that are elements of an `nn.Sequential` / `nn.ModuleList`;
- `Fusion`           the general kind (forward statements fused and hoisted,
                     layers replaced in `__init__`, call replacement), last.

Parts the kinds share are planners of their own modules, not registered:
`ForwardFusion` (forward.py), `Hoisting` (hoist.py), `InitReplacement`
(init.py), `WhenGuard` (when.py), `CallDispatch` (call.py); guardforms.py
holds the attribute guards `NoneGuardedLayer` reads, guardhelper.py its
checks of a match across one helper.

A new kind of rewrite is one `Kind` subclass (see base.py) added to `KINDS`
before the kinds whose matches it takes over.
"""

from dslc.rewrite.kinds.causallm import CausalLMLoss
from dslc.rewrite.kinds.classitem import ClassDispatch
from dslc.rewrite.kinds.container import ContainerFusion
from dslc.rewrite.kinds.fusion import Fusion
from dslc.rewrite.kinds.guarded import NoneGuardedLayer
from dslc.rewrite.kinds.helper import AcrossHelper
from dslc.rewrite.kinds.ziploop import ZipContainers

KINDS = (CausalLMLoss, ClassDispatch, NoneGuardedLayer, AcrossHelper, ZipContainers, ContainerFusion, Fusion)

__all__ = ["KINDS", "AcrossHelper", "CausalLMLoss", "ClassDispatch", "ContainerFusion", "Fusion", "NoneGuardedLayer", "ZipContainers"]
