"""Equivalence verification: original and rewritten modules run side by side
(same weights, same inputs), with tiny Hugging Face configurations.

- equivalence: the entry points (`verify_files`, `verify_sources`) and the public names
- isolation: the test in a forked child process, and what to report when the child dies
- differential: the steps in order, in this process
- selection: which classes to compare, which rules and tolerance hold them
- loading: both sources as modules, a `--factory` file, import failures
- building: the two instances of a class and their inputs
- compare: state-dict load, runs in each mode, outputs and gradients held to a tolerance
- report: options, tolerances, results, the report and its rendering
- tinyconfig: tiny configurations and synthesised inputs
"""
