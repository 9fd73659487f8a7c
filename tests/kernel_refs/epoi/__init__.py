"""REFERENCE KERNEL (tests only): a pure-PyTorch stand-in for comaniac/epoi."""

DSLC_REFERENCE_KERNEL = True
