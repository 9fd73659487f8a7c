"""Generated worst-case model files for the analysis budgets (issue 11).

Each generator returns the source of one module with two `nn.Module`
classes: `Big`, the pathological one, and `Small` after it, a plain
BertSelfOutput-like block (Dropout + residual add + LayerNorm, and a
softmax over the last dim) that every rule pack of the benchmark matches.
A budget that trips on `Big` must leave `Small` analysed and rewritten:
the tests (tests/test_speed_budgets.py) assert that, and
`benchmarks/speed.py --only worst` times each file.

    CASES: name -> (generator, description)
    TEST_SIZES: name -> the size the tests generate it at
"""

from __future__ import annotations

from typing import Callable

HEADER = '''import torch
import torch.nn.functional as F
from torch import nn
'''

SMALL = '''

class Small(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        probs = F.softmax(hidden_states, dim=-1)
        return probs
'''

BIG_INIT = '''

class Big(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.norm = nn.LayerNorm(config.hidden_size)
'''


def _module(big_body: str, init_extra: str = "") -> str:
    return HEADER + BIG_INIT + init_extra + big_body + SMALL


def if_else_chain(n: int = 40) -> str:
    """`forward` with `n` sequential `if/else` statements, each branch with a
    layer call, the conditions sharing a symbol (so z3 has work to do)."""
    lines = ["\n    def forward(self, x, mode):\n"]
    for i in range(n):
        lines.append(f"        if mode > {i}:\n            x = self.fc(x)\n"
                     f"        else:\n            x = F.softmax(x, dim=-1)\n")
    lines.append("        x = self.norm(self.dropout(x) + x)\n        return x\n")
    return _module("".join(lines))


def if_helpers(n: int = 40) -> str:
    """`n` sequential `if`s, each calling a helper method that holds layer
    calls and an `if` of its own (inlined into every path)."""
    lines = ["\n    def forward(self, x, flags):\n"]
    for i in range(n):
        lines.append(f"        if flags[{i}]:\n            x = self.helper_{i % 4}(x, flags)\n")
    lines.append("        return self.norm(self.dropout(x) + x)\n")
    for k in range(4):
        lines.append(f"\n    def helper_{k}(self, x, flags):\n"
                     f"        if flags.get('h{k}'):\n            x = self.act(self.fc(x))\n"
                     f"        else:\n            x = F.softmax(x, dim=-1)\n"
                     f"        return self.dropout(x)\n")
    return _module("".join(lines))


def big_sequential(n: int = 5000) -> str:
    """An `nn.Sequential(...)` literal with `n` elements in `__init__`."""
    elems = ",\n".join(
        "            nn.Linear(config.hidden_size, config.hidden_size)" if i % 2 == 0 else "            nn.GELU()"
        for i in range(n))
    init = f"        self.seq = nn.Sequential(\n{elems},\n        )\n"
    body = "\n    def forward(self, x):\n        x = self.seq(x)\n        return self.norm(self.dropout(x) + x)\n"
    return _module(body, init)


def while_chain(n: int = 40) -> str:
    """`n` sequential `while` loops, each with a layer call and a `break`."""
    lines = ["\n    def forward(self, x, steps):\n"]
    for i in range(n):
        lines.append(f"        while steps > {i}:\n            x = self.fc(x)\n"
                     f"            if x.sum() > {i}:\n                break\n")
    lines.append("        return self.norm(self.dropout(x) + x)\n")
    return _module("".join(lines))


def nested_while(n: int = 40) -> str:
    """`n` nested `while` loops around one layer call."""
    lines = ["\n    def forward(self, x, steps):\n"]
    for i in range(n):
        lines.append("    " * (i + 2) + f"while steps > {i}:\n")
    lines.append("    " * (n + 2) + "x = F.softmax(self.fc(x), dim=-1)\n")
    lines.append("        return self.norm(self.dropout(x) + x)\n")
    return _module("".join(lines))


def long_function(n: int = 10_000) -> str:
    """A `forward` of `n` lines of straight-line layer calls and arithmetic."""
    lines = ["\n    def forward(self, x):\n"]
    for i in range(n):
        k = i % 4
        if k == 0:
            lines.append("        x = self.fc(x)\n")
        elif k == 1:
            lines.append("        y = self.dropout(x)\n")
        elif k == 2:
            lines.append("        x = self.norm(y + x)\n")
        else:
            lines.append(f"        x = F.softmax(x * {i}, dim=-1)\n")
    lines.append("        return x\n")
    return _module("".join(lines))


def long_branchy_function(n: int = 10_000) -> str:
    """A `forward` of about `n` lines where every 10th statement is an `if`
    (with a layer call) over the same symbol."""
    lines = ["\n    def forward(self, x, mode):\n"]
    count = 0
    i = 0
    while count < n:
        if i % 10 == 0:
            lines.append(f"        if mode == {i}:\n            x = self.fc(x)\n")
            count += 2
        else:
            lines.append("        x = self.act(x) + 1\n")
            count += 1
        i += 1
    lines.append("        return self.norm(self.dropout(x) + x)\n")
    return _module("".join(lines))


CASES: dict[str, tuple[Callable[[], str], str]] = {
    "if_else_40": (if_else_chain, "forward with 40 sequential if/else"),
    "if_helpers_40": (if_helpers, "40 ifs calling helper methods"),
    "sequential_5000": (big_sequential, "nn.Sequential literal with 5000 elements"),
    "while_chain_40": (while_chain, "40 sequential while loops with break"),
    "nested_while_40": (nested_while, "40 nested while loops"),
    "lines_10000": (long_function, "a 10 000-line straight forward"),
    "branchy_10000": (long_branchy_function, "a 10 000-line forward, an if every 10 lines"),
}

# The sizes tests/test_speed_budgets.py generates each case at (with its
# budgets scaled down to match): the same shapes, fast enough for a test.
TEST_SIZES: dict[str, int] = {
    "if_else_40": 12, "if_helpers_40": 12, "sequential_5000": 300, "while_chain_40": 12,
    "nested_while_40": 12, "lines_10000": 400, "branchy_10000": 400,
}


def write_all(directory, names=None, separate: bool = False) -> list:
    """Write the cases (all, or `names`) as `<name>.py` under `directory`.

    `separate`: each in a folder of its own (`<name>/<name>.py`), so that a
    file's time is its own: the checks that read a rewritten class's
    sibling modules (subclasses, outside uses) would otherwise parse the
    other generated files, tens of thousands of lines each."""
    from pathlib import Path

    out = []
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, (gen, _) in CASES.items():
        if names and name not in names:
            continue
        folder = d / name if separate else d
        folder.mkdir(exist_ok=True)
        p = folder / f"{name}.py"
        p.write_text(gen())
        out.append(p)
    return out


def main(argv=None) -> int:
    """Seconds per generated input (and any extra files given), one cold
    `dslc apply --near-misses` each with the packs given, in child processes
    (CPU seconds: user + sys of the child).  `--tree DIR` (repeatable) runs
    the same inputs with the dslc of another checkout too, in the same run,
    so that before/after compare under one machine load.

        python benchmarks/worst_cases.py                       # all cases, all three packs
        python benchmarks/worst_cases.py --tree /tmp/base FILE.py ...
    """
    import argparse
    import json
    import os
    import resource
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=main.__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="extra files to time (e.g. a corpus file)")
    p.add_argument("--rules", action="append", help="rule packs (default: sdpa, adopter, liger)")
    p.add_argument("--only", help="comma-separated case names (default: all; 'none' for the files only)")
    p.add_argument("--tree", action="append", default=[], help="another checkout to time too")
    p.add_argument("--timeout", type=float, default=1200)
    args = p.parse_args(argv)
    rules = args.rules or [str(repo / "rulepacks" / f"{n}.adr") for n in ("sdpa", "adopter", "liger")]
    names = None if not args.only else [n for n in args.only.split(",") if n != "none"] or ["-"]
    tmp = tempfile.mkdtemp(prefix="dslc-worst-")
    inputs = write_all(tmp, names, separate=True) + [Path(f) for f in args.files]
    trees = [str(repo)] + args.tree
    print(f"{'input':40} " + " ".join(f"{Path(t).name[:18]:>18}" for t in trees) + "   (CPU s; W105 warnings)")
    for path in inputs:
        cells = []
        for tree in trees:
            cmd = [sys.executable, "-m", "dslc", "apply", "--no-cache", "--jobs", "1", "--near-misses",
                   "--format", "json"] + [a for r in rules for a in ("--rules", r)] + [str(path)]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            try:
                proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=args.timeout,
                                      env={**os.environ, "PYTHONPATH": tree})
            except subprocess.TimeoutExpired:
                cells.append(f"{'>' + str(int(args.timeout)):>12}      ")
                continue
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            try:
                rep = json.loads(proc.stdout)
                w105 = sum(1 for w in rep.get("warnings", ()) if w.get("code") == "W105")
                tb = "" if not rep.get("errors") else " E"
            except ValueError:
                w105, tb = "?", f" rc={proc.returncode}"
            cells.append(f"{cpu:10.1f} s {w105!s:>3}{tb:3}")
        print(f"{path.stem[:40]:40} " + " ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
