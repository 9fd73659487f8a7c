"""The rewrite: safety checks, minimal text edits, one class per kind of
rewrite, and the near-miss report for places left alone.

- `rewriter`  `rewrite_source`: the matches of one file -> the new source and
              one outcome per match; selects the kind of each match.
- `kinds/`    the kinds of rewrite (`kinds.KINDS`) and the parts they share.
- `context`   the per-file context: the indexed syntax tree, accepted edits,
              callee spelling, the `claim` / `delete_stmt` edit helpers.
- `imports`   the import scheduler: imports, helpers and the checkpoint hook
              the kinds request, written once per file.
- `plan`      `Plan` (one match's edits and requests) and `Skip`.
- `render`    target terms as source text (`Env`).
- `rules`     what a rule's patterns read and change.
- `flow`      data-flow questions that need the source (metadata reads,
              opaque statements, subclasses in sibling modules).
- `astutil`   small questions about stdlib `ast` nodes.
- `safety`    the checks decided before any edit, and the gate on the output.
- `edits`     `Edit`, `SourceMap`, non-overlapping application.
- `nearmiss`  the near-miss report.
"""
