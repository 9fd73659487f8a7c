"""REFERENCE KERNEL (tests only): a pure-PyTorch stand-in for awslabs/slapo."""

DSLC_REFERENCE_KERNEL = True
