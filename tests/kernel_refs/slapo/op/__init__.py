"""REFERENCE KERNEL (tests only)."""
