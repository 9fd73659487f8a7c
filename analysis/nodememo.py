"""Answers remembered per AST node, for the analysis' per-node memos."""

from __future__ import annotations

class NodeMemo:
    """Answers keyed by a node's identity.  The node is kept with its answer,
    so its id stays its own while the entry lives (a tree the analysis reads
    is never changed); past `limit` entries the memo starts again empty."""

    __slots__ = ("_known", "_limit")

    def __init__(self, limit: int = 50000) -> None:
        self._known: dict[int, tuple] = {}
        self._limit = limit

    def get(self, node, default=None):
        known = self._known.get(id(node))
        if known is not None and known[0] is node:
            return known[1]
        return default

    def put(self, node, answer) -> None:
        if len(self._known) > self._limit:
            self._known.clear()
        self._known[id(node)] = (node, answer)
