"""The rule language front end: source text, syntax tree, parser, checker,
printer, lowering to the IR, codes and diagnostics, and the pack loader."""
