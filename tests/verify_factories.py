"""Factory source shared by the verify tests (CPU and CUDA).

Examples carry a plain `Config` class: the factory builds the module with it
and synthesises inputs from the forward signature the way tiny configs do.
"""

EXAMPLE_FACTORY = '''\
import sys

import torch

from dslc.verify import tinyconfig


def make(cls):
    cfg = sys.modules[cls.__module__].Config()
    module = cls(cfg).eval()
    for kwargs in tinyconfig.input_candidates(cls.forward, cfg, torch):
        try:
            with torch.no_grad():
                module(**kwargs)
        except Exception:
            continue
        return module, tuple(kwargs.values())
    raise TypeError(f"no inputs fit {cls.__name__}")
'''
