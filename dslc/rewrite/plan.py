"""What planning one match yields: a `Plan` of edits and requests, or a `Skip`.

A kind of rewrite (dslc/rewrite/kinds/) adds its edits to the `Plan` of the
match; the imports, dispatch helpers and the checkpoint hook it needs are
requests that the import scheduler (`dslc.rewrite.imports`) emits once per
file when the match is accepted.  A match that cannot be rewritten raises
`Skip` with the reason the report shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dslc import codes
from dslc.rewrite.edits import Edit


class Skip(Exception):
    """A match cannot be rewritten: `Skip(CODE, message)` or `Skip(reason)`.

    `reason` (a `codes.Reason`) is the report's reason: the message and its
    registered code (dslc/codes.py).  A plain string without a code gets
    S499, which the tests flag.
    """

    def __init__(self, code_or_reason: str, message: str | None = None) -> None:
        if message is not None:
            reason = codes.reason(code_or_reason, message)
        elif isinstance(code_or_reason, codes.Reason):
            reason = code_or_reason
        else:
            reason = codes.Reason(codes.S_UNCLASSIFIED, str(code_or_reason))
        super().__init__(str(reason))
        self.reason = reason


@dataclass
class Plan:
    """The edits of one match and what it asks of the file (imports, helpers, hook)."""

    edits: list[Edit] = field(default_factory=list)
    imports: dict[str, str] = field(default_factory=dict)  # qualname -> how it is spelled
    import_lines: list[str] = field(default_factory=list)
    needs_hook: bool = False
    claimed: set[tuple[int, int]] = field(default_factory=set)  # (start, end) offsets of edited statements
    new_attrs: dict[str, set[str]] = field(default_factory=dict)  # class -> new attribute names
    lines: set[int] = field(default_factory=set)
    # Accepted edits (of earlier matches) that a `when` region absorbed into both branches.
    absorbed: list[Edit] = field(default_factory=list)
    # Generated per-call dispatch helpers: name -> definition (rules with `fallback`).
    helper_defs: dict[str, str] = field(default_factory=dict)
    # Warnings of an applied rewrite: (line, code, message).
    warnings: list[tuple[int, str, str]] = field(default_factory=list)
    # `option probe`: id(statement) -> the line that replaces it instead of deleting it
    probes: dict[int, str] = field(default_factory=dict)
    # `option shape`: id(raise-only size check) -> its rewritten lines (kinds/keepchecks.py)
    checks: dict[int, str] = field(default_factory=dict)
