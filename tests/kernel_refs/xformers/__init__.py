"""REFERENCE KERNEL (tests only): a stand-in for old xFormers (<= 0.0.22)."""

DSLC_REFERENCE_KERNEL = True
