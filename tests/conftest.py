"""Shared fixtures.

`transformers_src` gives the unpacked transformers 4.35.0 package (downloaded
once with `pip download`, see dslc/corpus.py); tests that need it skip with the
reason when it cannot be fetched.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hypothesis import settings

import packcache

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# The shipped rule packs are loaded (parsed, checked, compiled) once per test
# process, not once per `dslc apply` run in-process: see tests/packcache.py.
packcache.install()

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _private_facts_cache(tmp_path_factory):
    """`dslc apply` without --cache-dir/--no-cache writes $XDG_CACHE_HOME/dslc/facts:
    give each test process (each xdist worker) its own, never the user's.
    The corpus cache (~/.cache/dslc/corpus, DSLC_CORPUS_DIR) does not follow it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def transformers_src() -> Path:
    from dslc import corpus

    try:
        return corpus.transformers_root()
    except RuntimeError as exc:  # no network / no pip
        pytest.skip(f"transformers 4.35.0 sources unavailable: {exc}")


def pytest_configure(config):
    """`-n N` spreads the tests file by file (`--dist loadfile`), not one by
    one: a module-scoped fixture (often a `dslc apply` of a whole model file
    with a large pack) then runs once, not once per worker.  An explicit
    `--dist` (command line or PYTEST_ADDOPTS) wins.  (`--dist loadgroup` with
    `xdist_group` marks would be finer, but pytest-xdist 3.8 cannot rename
    the node ids of pytest 9, so its groups are ignored.)"""
    given = list(config.invocation_params.args) + os.environ.get("PYTEST_ADDOPTS", "").split()
    explicit = any(a in ("--dist", "-d") or a.startswith("--dist=") for a in given)
    if getattr(config.option, "dist", None) == "load" and not explicit:
        config.option.dist = "loadfile"
