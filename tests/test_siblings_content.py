"""`flow._Siblings` answers per file content, not per stat stamp.

Two same-size writes of a sibling module within one timestamp tick used to
leave (path, size, mtime) as it was, so a long-lived process (one `dslc
apply` over many files, a test session) answered from the first content.
The same-tick write is made here by setting the first mtime back.
"""

from __future__ import annotations

import ast
import builtins
import os
import re

from dslc.rewrite import flow

PATTERN = re.compile(r"\bBase\b")


def _classes(tree) -> list[str]:
    return sorted(c.name for c in tree.body if isinstance(c, ast.ClassDef))


def _ask(sib, path):
    return sib.derived(str(path), ("names",), PATTERN, _classes, None)


def test_a_same_size_write_in_one_tick_is_seen(tmp_path):
    sib = flow._Siblings()
    path = tmp_path / "mod.py"
    path.write_text("class A(Base):\n    pass\n")
    st = os.stat(path)
    assert _ask(sib, path) == ["A"]
    path.write_text("class B(Base):\n    pass\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    assert _ask(sib, path) == ["B"]
    path.write_text("class A(Base):\n    pass\n")  # back: the first answer again
    assert _ask(sib, path) == ["A"]


def test_a_settled_file_is_not_read_again(tmp_path, monkeypatch):
    sib = flow._Siblings()
    monkeypatch.setattr(sib, "SETTLE_NS", -(10 ** 18))  # every stamp counts as settled
    path = tmp_path / "mod.py"
    path.write_text("class A(Base):\n    pass\n")
    assert _ask(sib, path) == ["A"]
    real_open = builtins.open

    def no_read(file, *a, **k):
        assert os.fspath(file) != str(path), "a settled, unchanged file was read again"
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", no_read)
    assert _ask(sib, path) == ["A"]
    assert sib.derived(str(path), ("other",), PATTERN, lambda t: len(t.body), None) == 1
