"""The rewrite: safety checks, minimal text edits, one planner per kind of
rewrite, and the near-miss report for places left alone."""
