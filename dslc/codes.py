"""The registry of every code dslc prints: stable identifiers with their docs.

A code never changes meaning once released.  Ranges:

* rule files (`dslc check`, the loader): ADR0xx syntax and input, ADR1xx
  structure (sections, options, contracts), ADR2xx variables and data flow,
  ADR3xx `requires` and versions, ADR4xx rule selection, ADR5xx names and
  types (warnings of the stricter checks);
* `dslc apply` outcomes: E1xx errors of a file (exit 1), W1xx warnings,
  I1xx notes, S1xx matches the matcher refuses, S2xx safety refusals,
  S3xx what the emitter cannot write, S4xx conflicts between the rewrites
  of one run and the final gates.

`dslc explain CODE` prints `Code.doc`.  A skipped match carries a `Reason`:
its code and its message (a `str`, so it renders as the text alone); make one
with `reason(CODE, message)` or raise `dslc.rewrite.rewriter.Skip(CODE, message)`.
A new outcome gets a new code here (never reuse a number); tests check that
every code the sources mention is registered.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    severity: str  # error | warning | note | skip
    title: str
    doc: str


class Reason(str):
    """Why a match was skipped: the message text, carrying its stable `code`.

    A `str` subclass, so that it prints, compares and serialises as the
    message alone (reports and goldens show the text; JSON adds `code`).
    """

    code: str

    def __new__(cls, code: str, message: str) -> "Reason":
        self = super().__new__(cls, message)
        self.code = code
        return self

    def __reduce__(self):  # pickles across worker processes with its code
        return (Reason, (self.code, str(self)))

    @property
    def message(self) -> str:
        return str(self)


def reason(code: str, message: str) -> Reason:
    """A skip reason; `code` must be registered (a typo fails loudly in tests)."""
    if code not in REGISTRY:
        raise KeyError(f"unregistered outcome code {code!r}")
    return Reason(code, message)


def code_of(text: str | None, default: str = "S499") -> str | None:
    """The code of a reason (None for None; `default` for a plain string)."""
    if text is None:
        return None
    return getattr(text, "code", None) or default


REGISTRY: dict[str, Code] = {}


def _code(code: str, severity: str, title: str, doc: str) -> str:
    if code in REGISTRY:  # two meanings for one code: a merge that renumbered nothing
        raise ValueError(f"code {code} registered twice ({REGISTRY[code].title!r}, {title!r})")
    REGISTRY[code] = Code(code, severity, title, " ".join(doc.split()))
    return code


# -- ADR0xx: input and syntax ------------------------------------------------
SYNTAX = _code("ADR001", "error", "syntax error", """
    The parser met a token that cannot continue the rule file here. The
    message lists what could come next. Check for a missing `;` between
    pattern nodes, a missing `}` or an unbalanced `(`.""")
UNEXPECTED_EOF = _code("ADR002", "error", "unexpected end of file", """
    The file ends in the middle of a construct (an unclosed `{`, `(` or an
    unfinished rule). Close the construct or remove the partial text.""")
BAD_CHARACTER = _code("ADR003", "error", "invalid character or token", """
    The lexer found text that is no token of the language: a stray character,
    an unterminated string (strings end on the same line), a `$` without a
    variable name.""")
DECODE = _code("ADR004", "error", "file is not UTF-8 text", """
    Rule files are UTF-8 text. The file holds a NUL byte (binary data) or a
    byte sequence that is not valid UTF-8.""")
TOO_LARGE = _code("ADR005", "error", "file too large", """
    Rule files are limited to 1 MB; larger inputs are refused before parsing.
    Split the pack or remove generated content.""")
TOO_DEEP = _code("ADR006", "error", "expression nested too deeply", """
    An expression or condition nests more than 100 levels deep. Patterns
    describe single DL nodes; write the nesting as several nodes joined by
    variables.""")
IO_ERROR = _code("ADR007", "error", "cannot read file", """
    The file could not be read (permissions, a directory where a file was
    expected, a broken link).""")

# -- ADR1xx: structure ---------------------------------------------------------
NO_PACK = _code("ADR101", "error", "missing or repeated pack header", """
    Every rule file starts with exactly one `pack <name> "<description>"`
    line naming the pack its rules belong to.""")
UNKNOWN_SECTION = _code("ADR102", "error", "unknown section", """
    A rule body holds only these sections: kernel, exact, tolerance, init,
    forward, where, when, params, option, note. Anything else is a typo or
    an unsupported construct.""")
DUP_RULE = _code("ADR103", "error", "duplicate rule name", """
    Rule names are unique in their pack: `--select pack:rule` and reports
    refer to rules by name.""")
DUP_PACK = _code("ADR104", "warning", "duplicate pack name", """
    Two files given together declare the same pack name. Their rules are
    kept apart, but `--select pack:rule` becomes ambiguous.""")
UNKNOWN_OPTION = _code("ADR105", "error", "unknown option", """
    `option NAME = VALUE` accepts only the options the tools read: scope
    ("any" for rules without an init item, "forward" for rules with one),
    detect (True: the rule only reports), allow (a string of warning codes
    the rule acknowledges, e.g. "ADR209"; errors cannot be allowed),
    commutative, check, rows, keeps, inner (docs/adr-language.md).""")
BAD_OPTION = _code("ADR106", "error", "invalid option value", """
    The option exists but the value has the wrong type or is not one of the
    allowed values (see `dslc explain ADR105`).""")
NO_KERNEL = _code("ADR107", "error", "rule names no kernel", """
    A rule states the kernel(s) it brings in with `kernel <qualified.name>`
    (at least one), so that a run can report what must be installed.""")
NO_ITEMS = _code("ADR108", "error", "rule has no init or forward item", """
    A rule needs at least one item: `init { ... } => { ... }` or
    `forward { ... } => { ... }`.""")
DUP_SECTION = _code("ADR109", "error", "section given twice", """
    `init`, `forward`, `when`, `params` and the contract (`exact` or
    `tolerance`) may appear at most once per rule.""")
NO_CONTRACT = _code("ADR110", "error", "missing numerical contract", """
    Every rule that rewrites code states what the equivalence test holds it
    to: `exact` (bit-identical results) or `tolerance atol=<a> rtol=<r>`.
    Detect-only rules (all targets `_`) may omit it.""")
BAD_TOLERANCE = _code("ADR111", "error", "invalid tolerance", """
    `tolerance` takes `atol=` and `rtol=` (each at most once), non-negative
    numbers, at least one of them greater than zero.""")
NOOP_RULE = _code("ADR112", "warning", "rule rewrites nothing", """
    Every item of the rule has the target `_`: the rule only detects. Add
    `option detect = True` to say that this is intended.""")
WILDCARD_TARGET = _code("ADR113", "error", "wildcard in a target", """
    `*` matches any node in a source pattern; a target must say exactly
    what code to write, so it cannot hold `*`.""")
UNSUPPORTED_TERM = _code("ADR114", "error", "unsupported term", """
    Pattern arguments are variables, constants, `name=arg`, `...` and (in
    targets) `$v.attr` and tensor expressions. A bare qualified name,
    a call or subscript nested in an argument, or an expression nested in a
    source node cannot be matched; bind it to a variable instead.""")
BAD_NODE = _code("ADR115", "error", "node not allowed here", """
    init nodes are constructor calls `qual.Type(args) -> $v` or lookups
    `qual.CONTAINER[$key] -> $v`; forward nodes are calls, tensor ops
    (`$a + $b -> $c`), unary ops (`-$a -> $b`) or `*`. A bare term is no
    node.""")
BAD_REST = _code("ADR116", "error", "misplaced `...`", """
    `...` (any further arguments) may appear once, as the last argument of
    a source pattern call.""")
DUP_KEYWORD = _code("ADR117", "error", "keyword argument repeated", """
    A call pattern names each keyword argument at most once.""")
NO_OUTPUT = _code("ADR118", "error", "init node binds no variable", """
    An init node says which attribute it binds: `torch.nn.Linear($i, $o) ->
    $lin`. Without `-> $var` the forward pattern cannot refer to it.""")
EMPTY_PATTERN = _code("ADR119", "error", "empty source pattern", """
    A source pattern `{ }` matches nothing; write at least one node.""")
UNCOMPILABLE = _code("ADR120", "error", "rule does not compile", """
    The rule is well formed but cannot be turned into a matcher, e.g. a
    keyword argument that the layer's signature (dslc/data/signatures.json)
    does not have. The rule is not loaded; `dslc apply` refuses the pack.""")
INNER_MISUSE = _code("ADR121", "error", "`option inner` names a layer the target does not keep", """
    `option inner = "$conv[0]"` states that the layer the init target binds
    to `$conv` keeps the original `$conv` layer at `[0]`, so that other uses
    of the attribute can be redirected there.  The variable must be bound by
    the init source and bound again by an init target node that takes `$conv`
    itself as an argument (the original constructor call is embedded).""")


# -- ADR2xx: variables -------------------------------------------------------
UNBOUND_TARGET = _code("ADR201", "error", "unbound variable in target", """
    A target may use only variables its source binds (forward targets may
    also use the variables of the init source). Otherwise the rewriter has
    no text to put there. Bind the variable in the source pattern or write a
    constant.""")
UNUSED_VAR = _code("ADR202", "warning", "variable never used", """
    The source binds a variable that no target, constraint, condition,
    params mapping or other source node uses: it constrains nothing. Name it
    `$_...` to say it is deliberately ignored. Items with target `_` are not
    checked.""")
NO_FORWARD_USE = _code("ADR203", "error", "init node with no forward counterpart", """
    The rule has a forward item, but no forward source node calls the layer
    this init node binds (`$v(...)` or by its type). The matcher links init
    bindings to forward calls through these uses; an unlinked init node
    would match any attribute of the class.""")
UNKNOWN_LAYER = _code("ADR204", "error", "forward calls an unknown layer", """
    `$v(...)` in a forward source calls the layer that the init source
    binds to `$v`; no init node binds it (or the rule has no init item).""")
PARAMS_UNKNOWN = _code("ADR205", "error", "params names an unknown variable", """
    `params { $new.p <- $old.q; }` maps a parameter of a target layer to one
    of a source layer: both variables must be init-source variables.""")
CONSTRAINT_UNKNOWN = _code("ADR206", "error", "constraint names an unknown variable", """
    `where` and `when` constrain variables bound by the rule's source
    patterns; this variable appears in none.""")
AMBIGUOUS_LAYER = _code("ADR207", "error", "ambiguous layer type", """
    A forward node `qual.Type(...)` calls the init layer of that type, but
    several init nodes have that type. Call it as `$var(...)` instead.""")
REBOUND_VAR = _code("ADR208", "error", "variable bound twice", """
    Each variable is the output of at most one node of a pattern (data flow:
    one definition). Use a new variable for the second output.""")
INIT_USES_FORWARD = _code("ADR209", "warning", "init target uses a forward variable", """
    The init target uses a variable bound only by the forward pattern; its
    source text (e.g. `self.num_heads`) is copied into `__init__`, where it
    must mean the same thing. The rewriter checks this; prefer a variable of
    the init source.""")

UNRECORDED_METHOD = _code("ADR210", "warning", "tensor method the analysis does not record", """
    A source node `torch.Tensor.m($x, ...)` matches the method call
    `x.m(...)` only for the methods the analysis records as nodes
    (`transpose`, `masked_fill`, `softmax`, `matmul`, `bmm` on a local name;
    `to` on the result of a DL call; see docs/adr-language.md). Any other
    method stays inside an opaque statement, so this node can never match.
    Use the function form (`torch.transpose($x, ...)`) or one of those
    methods.""")
BAD_DOTTED = _code("ADR211", "error", "a constraint's dotted constant cannot be decided", """
    A `where` constraint may list dotted constants (`where $_f32 in
    (torch.float32, torch.float)`): the bound value must be spelled as one
    of them (its canonical source text), so a dotted constant needs a dot
    (`torch.float32`, not `float32`, which could be any local name), and
    only `==` and `in` take one: with `!=` or `not in`, another spelling
    of the same value (an alias, an import) would pass.""")

# -- ADR3xx: requires and versions -------------------------------------------
BAD_VERSION = _code("ADR301", "error", "malformed version range", """
    The version range of `requires` is a PEP 440 specifier set: clauses such
    as `>=0.1`, `<0.0.23`, `==1.2.*`, `~=2.0` separated by commas.""")
DUP_REQUIRES = _code("ADR302", "error", "package required twice", """
    A pack names each package once in `requires`; merge the version ranges
    into one specifier set.""")
KERNEL_NOT_REQUIRED = _code("ADR303", "warning", "kernel package not required", """
    The kernel's top-level package is neither `torch` nor any package (or
    `module`) named by a `requires` line, so a run cannot tell the user what
    to install.""")

# -- class items, safety classes, run-time needs (ADR15x, ADR25x, ADR35x) --------
CLASS_MIXED = _code("ADR150", "error", "class item mixed with init/forward items", """
    A `class { ... } => { ... }` item describes a whole module class by what
    its forward computes and rewrites that class; it cannot be combined with
    `init` or `forward` items in the same rule (write two rules).""")
CLASS_NODE = _code("ADR151", "error", "node not allowed in a class item", """
    The forward pattern of a class item is a data-flow pattern: layer calls
    `$l(...)`, function calls `q.f(...)`, methods `$x.m(...)`, attribute reads
    `$x.dtype`, and tensor ops; each binds its output (`-> $v`). Wildcards and
    `...` are not allowed (the match must cover the whole forward), nor a
    node without an output.""")
CLASS_RESULT = _code("ADR152", "error", "class forward pattern is not one expression", """
    Every output of a class-item forward pattern except the last must be used
    by a later node, and the last node's output is what forward returns; the
    target must define that same output variable.""")
METHOD_OUTSIDE_CLASS = _code("ADR153", "error", "method or attribute node outside a class item", """
    `$x.m(...)` and `$x.attr` patterns are matched against the expression
    graph of a class's forward; `init` and `forward` items match DL-node
    paths, which do not record tensor methods. Use a `class` item.""")
OPTIONAL_MISUSE = _code("ADR160", "error", "misused optional node", """
    `<node> -> $out optional when $m is not None` marks a forward node that
    may be absent. In a source pattern (one such node per rule) it has one
    output, which a later source node reads; one of its operands is the
    output of an earlier source node (the value that flows on when the node
    is absent) and `$m` is another operand that no other source node binds.
    In a target it marks a node written only where the source node is
    present: its output is the optional source node's, its `when` variable
    the same. A variable that only the optional source node binds may appear
    in the target only inside optional target nodes (it is None where the
    node is absent). Not in init or class items.""")
REQUIRES_UNKNOWN = _code("ADR350", "error", "rule requires a package the pack does not require", """
    `requires PKG ...` inside a rule names what its kernel needs at run time;
    PKG must be named by a `requires` line of the pack (which gives its
    version range, import name and install hint).""")
BAD_DEVICE = _code("ADR351", "error", "unknown device", """
    `device NAME on $x`: NAME is `cuda` (the kernel runs only when the tensor
    bound to `$x` is on a CUDA device) or `cpu`.""")
BAD_FALLBACK = _code("ADR352", "error", "invalid fallback", """
    `fallback original` is the one fallback: where the kernel's needs are not
    met at run time the original computation runs. It needs a `requires`
    clause in the rule (what is checked), and a rule shape the emitter can
    guard: a class item (a per-call dispatch in forward), an init item that
    replaces layers in place (a per-construction choice), or a forward item
    whose source and target are one node each (a per-call dispatch helper).""")
GUARDED_FORWARD = _code("ADR353", "error", "run-time guard on `__init__` of a rule that changes forward", """
    `when` (and `fallback original` on a rule with an init target, which
    chooses per construction) writes `if <cond>: <new layers> else: <old
    layers>` in `__init__`.  The old layers then exist only in the `else`
    branch, so a forward rewrite cannot be right on both sides: `dslc apply`
    refuses every match of such a rule (S305).  Leave the forward item
    unchanged (target `_` or equal to its source), or guard per call with a
    one-node forward item and `fallback original`.""")
KEEP_MISUSE = _code("ADR354", "error", "misused `keep`", """
    `keep $v, ...` names intermediates of a forward rewrite (outputs of
    source nodes other than the last) that the code may still need where a
    run-time condition holds: read after the match only in one branch of a
    condition, or updated between the matched statements inside an `if`
    without `else`.  `dslc apply` then keeps the original statements for
    that condition and the rewrite on the other branch, chosen per call.
    The rule must rewrite forward and make no other run-time choice (`when`,
    `fallback`).""")

# -- ADR4xx: selection -----------------------------------------------------------
UNKNOWN_SELECT = _code("ADR401", "error", "unknown rule selection", """
    `--select pack:rule` (or `pack` alone, or `rule` alone) names no loaded
    pack or rule.""")

UNKNOWN_IGNORE = _code("ADR402", "warning", "ignored rule not loaded", """
    `--ignore pack:rule` (or `ignore = [...]` in `[tool.dslc]`) names no rule
    of the loaded (and selected) packs; it has no effect. Check the spelling
    against the rule names of the summary table of `dslc apply`.""")

# -- ADR5xx: names and types (the stricter checks of `dslc check`) -----------
UNKNOWN_NAME = _code("ADR501", "warning", "qualified name not found", """
    The rule names `pkg.mod.Name`, but the installed package `pkg` has no
    such module or top-level name (looked up in the signature table and in
    the package's source, without importing it). Usually a typo: the help
    suggests the closest name. Names of packages that are not installed here
    are not checked.""")
TENSOR_VS_STRING = _code("ADR502", "warning", "a tensor compared with a string", """
    A `where`/`when` constraint compares a variable that holds a tensor (an
    output of a forward node, or an operand of a tensor operation) with a
    string; it can never hold, so the rule never matches.""")
KEYWORD_TYPE = _code("ADR503", "warning", "keyword value of the wrong type", """
    A keyword argument of a call pattern is a constant whose type does not
    fit the parameter's default in the signature table (a string where the
    default is a number or a bool, a number where it is a string). Such a
    pattern never matches, and such a target builds a broken layer.""")
NO_SUCH_PARAM = _code("ADR504", "warning", "layer has no such parameter", """
    A `params` mapping names `$layer.p`, but the layer's class (read from
    its source) registers no parameter or buffer `p`. The checkpoint mapping
    would fail at load time.""")

# =============================================================================
# `dslc apply`: errors of one file (the run goes on; exit status 1)

E_UNREADABLE = _code("E100", "error", "cannot read the file", """
    The file could not be read: permissions, it vanished during the run, or
    the path is a directory, a FIFO or another non-file. The other files are
    still processed.""")
E_SYNTAX = _code("E101", "error", "the file does not parse", """
    The file is not valid Python for the running interpreter, so nothing in
    it is matched or rewritten. The message gives the line and the parser's
    complaint.""")
E_NOT_TEXT = _code("E102", "error", "not text in its encoding", """
    The bytes are not valid in the file's declared encoding (PEP 263 cookie,
    BOM, else UTF-8), hold NUL bytes, or the cookie names an unknown codec
    or contradicts the BOM.""")
E_WRITE = _code("E103", "error", "cannot write the rewrite", """
    `--write` or `--patch-dir` could not write the new file (permissions, a
    full disk, a read-only folder). The original is left as it was.""")
E_ENCODE = _code("E104", "error", "cannot encode the rewrite", """
    The rewritten text holds characters the file's encoding cannot represent
    (e.g. a kernel name in a latin-1 file); nothing is written.""")
E_CHANGED = _code("E105", "error", "changed on disk during the run", """
    The file's bytes changed between reading and writing it (an editor or
    another tool wrote it). It is not overwritten; run dslc again.""")
E_NO_CLASS = _code("E120", "error", "no such class", """
    `dslc structure --class NAME` names no torch.nn.Module subclass of the
    file; the message lists the classes it has.""")
E_VERIFY = _code("E110", "error", "--verify found the rewrite not equivalent", """
    With `--verify`, the rewritten classes were run against the originals on
    random inputs and some output differed beyond the rule's tolerance (or
    the rewritten module failed to build or run). The rewrite is not emitted
    and its matches are reported skipped with code S404.""")
E_INTERNAL = _code("E199", "error", "internal error", """
    A stage of dslc raised an exception on this file or on one match: a bug
    in dslc, reported with the exception and where it happened. The match
    (or the file) is not rewritten, the rest of the run goes on, and the exit
    status is 1. Please report it with the file that triggers it.""")

# -- W1xx / I1xx: warnings and notes of `dslc apply` -------------------------
W_PATH_CAP = _code("W101", "warning", "too many paths through a function", """
    A function has more control-flow paths than the analysis enumerates
    (256 by default); only the first ones are matched, so a location on a
    later path can be missed. Reported only for functions that hold a name a
    selected rule looks for.""")
W_BASE_HIDDEN = _code("W102", "warning", "base class outside the analyzed tree", """
    A class with a `forward` derives from a base that is defined outside the
    files given, so whether it is a `torch.nn.Module` is unknown and it is
    analyzed as plain code. Give the tree that defines the base (or `--root`)
    to include the class.""")
W_RECURSION = _code("W103", "warning", "class nested too deeply to analyze", """
    The analysis hit Python's recursion limit on a class; its facts are left
    out and nothing in it is matched.""")
W_ANALYSIS = _code("W104", "warning", "analysis problem", """
    The analysis could not read or decode a file it was asked about (or
    another module of the tree it resolves names in); the message says
    which and why. Matching goes on with what is known.""")
W_BUDGET = _code("W105", "warning", "analysis budget exceeded", """
    A function or container is too large for the analysis's per-function
    budgets (docs/performance.md): too much path work or a path too long
    (its paths are dropped and nothing in it is matched), too many guards
    for z3 (later guards are assumed feasible; every match's guards are
    still checked), or a container literal with too many elements (they are
    not bound). The file's other functions and classes are analyzed as
    usual; the message says which budget and where.""")
W_VERIFY_SKIPPED = _code("W110", "warning", "verification of a class skipped", """
    With `--verify`, a rewritten class could not be checked: its kernel is
    not installed, it needs a GPU, or no inputs could be built for it. The
    rewrite is still emitted; check it where the kernel runs.""")
W_OUTSIDE_SCRIPT = _code("W111", "warning", "a script of the package reaches a rewritten layer", """
    A sibling module that is a script of its own (it has an
    `if __name__ == "__main__":` block: a checkpoint converter, a TF-weight
    loader run by hand) reaches an attribute the rewrite replaces or removes
    (`hf_mlp.fc1`, `pointer.LayerNorm`). The model itself is rewritten: the
    script is another program, which may now fail or convert differently.
    The warning names the script's line; update the script for the
    rewritten layer (its checkpoint keys are in the rule's `params`) or
    leave the class out (`--ignore`, or a `# dslc: ignore` comment).""")
W_TREE_WALK = _code("W112", "warning", "a module tree is walked by computed names", """
    A function of the file or of a sibling module walks a model by names
    it computes (`pointer = getattr(pointer, scope_names[0])` in
    transformers' `load_tf_weights_in_*`), which the outside-use check
    (S220) cannot read. A checkpoint that names a layer the rewrite
    replaces or removes then fails to load (an AttributeError, or the
    loader skips that weight). The rewrite is kept (refusing would drop
    every such package's rewrites for a loader few use); load such
    checkpoints into the original model and save its state dict, which the
    rewritten model loads (the rule's `params`).""")
I_VERIFIED = _code("I110", "note", "verification of a class passed", """
    With `--verify`, a rewritten class produced the same outputs as the
    original within the rule's tolerance; the note gives the largest absolute
    and relative differences and the kernels used.""")
I_MISSING_KERNEL = _code("I120", "note", "a kernel package is not installed", """
    A pack's `requires` names a package (or module, or version range) that is
    not importable here, and a rewrite of this run imports a kernel from it.
    The rewritten code needs it to run; the note gives the install hint.""")
I_TEMP_REMOVED = _code("I130", "note", "stale temporary files removed", """
    An earlier `dslc apply --write` was interrupted (killed, power loss)
    between writing a file's temporary copy and replacing the file; this run
    found such `*.dslc-tmp` files (of no dslc process still running) and
    removed them. The files themselves were never half-written.""")
I_UNSAFE_LEFT_OUT = _code("I140", "note", "an unsafe rule was left out", """
    The rule is declared `unsafe` (known to change numbers or not to
    construct) and `--unsafe` (or `[tool.dslc] unsafe = true`) was not
    given, so `dslc apply` did not apply it. The JSON report lists it under
    `left_out`.""")


# -- S1xx: the matcher refuses a match ---------------------------------------
S_OVERLAP_RULE = _code("S101", "skip", "overlaps a match of an earlier rule", """
    Two rules matched overlapping statements. The earlier rule in pack order
    (then the earlier location) wins; the other match is reported with this
    code. Deselect the winning rule to apply the other.""")
S_NOT_STATIC = _code("S102", "skip", "a constraint needs a value that is not static", """
    A literal in the pattern or a `where` constraint needs a constant, but
    the source passes an expression whose value is known only at run time
    (`bias=config.use_bias`). The rewrite would be right for some values only,
    so it is refused.""")

# -- S2xx: safety refusals ------------------------------------------------------
S_GUARDS_UNKNOWN = _code("S201", "skip", "guards could not be decided", """
    The conditions (`if` tests) on the paths through the location could not
    be proved consistent or contradictory by the solver; the match is
    refused as unsafe.""")
S_GUARDS_CONTRADICT = _code("S202", "skip", "contradictory guards", """
    The matched statements lie on no feasible path together: their guards
    cannot all hold at once, so the nodes never run in sequence.""")
S_CONSTRAINT_STATIC = _code("S203", "skip", "a `where` constraint is not known statically", """
    A rule constrains a bound value (`where $p == 0.0`) but the source value
    is an expression, not a constant; the rewrite is refused.""")
S_VALUE_READ = _code("S204", "skip", "a removed value is read elsewhere", """
    A value the rewrite removes (an intermediate output of the matched
    nodes) is read after the match, or between its nodes by code that is not
    part of the match, on some path. Removing it would change that code.""")
S_INPUT_CHANGED = _code("S205", "skip", "an input is reassigned before the fused call", """
    A name the fused call reads is written between the matched statements,
    so at the fused call's position it no longer holds the value the original
    code used (or a line the rewrite removes writes it).""")
S_ATTR_ASSIGNED = _code("S206", "skip", "a replaced attribute is assigned elsewhere", """
    An attribute the rewrite replaces or removes is also assigned outside its
    init statement (another method, a second assignment). The fused layer
    would be overwritten or go stale.""")
S_ATTR_USED = _code("S207", "skip", "a replaced attribute is used elsewhere", """
    An attribute the rewrite replaces or removes is used by other code (a
    different method or statement, another path). That code would see the
    fused layer or a missing attribute.  A rule whose target keeps the
    original layer inside the new one states it (`option inner = "$conv[0]"`)
    and such reads and calls are redirected there; the reason then says why
    a use could not be.""")
S_WHEN_NEVER = _code("S208", "skip", "the `when` condition can never hold", """
    The init statement of a `when` rule is built only on a branch where the
    rule's condition is false; the location is not one the rule describes.""")
S_NO_PATH = _code("S209", "skip", "the matched nodes are on no analyzed path", """
    The match was found, but no composition path holds all its nodes, so the
    data flow around it cannot be checked.""")
S_INHERITED = _code("S210", "skip", "the matched code is inherited", """
    The matched statements belong to a base class; editing them would change
    every class that shares that base.""")
S_NOT_CALLED = _code("S211", "skip", "the matched layer is never called", """
    An init-only rewrite would replace a layer that forward never calls (or
    whose call was not found); replacing it changes nothing useful and may
    break code that reads it.""")
S_CONTAINER_USE = _code("S212", "skip", "a container is used in a way the rewrite changes", """
    The layers sit in an `nn.Sequential` that is also indexed, iterated,
    reassigned, passed around or not called at the matched location; fusing
    its elements would change what that code sees.""")
S_REORDER = _code("S213", "skip", "moving a statement would change a value", """
    Writing the fused call where the rewrite must put it would move a
    statement past another that uses the same name, changing the value one
    of them reads.""")
S_SCRIPTED = _code("S214", "skip", "the location is compiled by TorchScript", """
    The matched code is inside a function decorated with `@torch.jit.script`
    (or similar); the kernel is a Python-level call that TorchScript cannot
    compile, so the rewrite would break the model at import time.""")
S_OUTSIDE_USE = _code("S220", "skip", "a replaced attribute is reached from outside the class", """
    An attribute the rewrite replaces (another module type) or removes is
    reached by code outside the class: a module-level function
    (`model.backbone.conv.weight` in a weight loader), another class
    (`self.body.layer[-1].conv.out_channels`), a sibling module of the
    package, or `getattr`/`hasattr`/`setattr` with its name. That code would
    read a missing attribute, call the fused layer where the original was
    meant, or store a layer nobody calls. The reason names the file and line.
    Uses that provably reach another object are allowed: `self.<attr>` of a
    class that binds it itself (and is no base of the rewritten class), a
    chain rooted at an imported name or a class, or a `self.a.b` chain whose
    links are bound to other classes of the file.""")

# -- S3xx: what the emitter cannot write -------------------------------------
S_LOCATE = _code("S301", "skip", "cannot locate the statement", """
    A matched node refers to a statement the rewriter cannot find in the
    file's syntax tree (the analysis and the text disagree).""")
S_MULTI_STMT = _code("S302", "skip", "several statements on one line", """
    The matched statement shares its line with another (`a = f(x); b = g(a)`);
    the emitter edits whole statements and refuses such lines.""")
S_TARGET = _code("S303", "skip", "the target cannot be written", """
    A term of the rule's target cannot be rendered at this location: a
    variable with no value in the source, a wildcard, an operator without
    operands, a node without callee or output. Usually a limit of the rule;
    `dslc check` catches most of these.""")
S_IMPORT_CLASH = _code("S304", "skip", "the kernel cannot be imported", """
    The names the import of a kernel would bind are already taken in the
    file, so the rewrite could not refer to the kernel without shadowing.""")
S_WHEN_FORWARD = _code("S305", "skip", "a rule that chooses its layers in `__init__` changes forward", """
    A rule with `when`, or with a per-construction fallback (`fallback
    original` with `needs` and an init target: the kernel's layers where
    its needs hold), keeps both layers in an `if`/`else` of `__init__`; its
    forward must stay as it is, since the old layers live only in the
    `else` branch.  The reason says which of the two (or both) applies.""")
S_NO_BINDING = _code("S306", "skip", "an init variable matched no binding", """
    An init pattern variable was not matched to an attribute assignment of
    the class, so the init statement to rewrite is unknown.""")
S_CROSS_METHOD = _code("S307", "skip", "the match crosses methods", """
    The matched nodes come from several methods (through inlined calls).  The
    emitter edits across two of them only when one is a helper the other
    calls once and the removed layer's call is the last matched one; the
    reason says which condition failed.""")
S_STMT_SHAPE = _code("S308", "skip", "the statement has a shape the emitter does not rewrite", """
    A matched call is not in a plain `name = call(...)` (or `self.x = ...`)
    statement: an augmented assignment, a nested expression, a tuple target,
    a statement with other effects that cannot simply be removed.""")
S_EXTRA_ARG = _code("S309", "skip", "an argument has no counterpart in the target", """
    The source call passes an argument the pattern accepts (through `...`)
    but the target does not say where it goes; dropping it would change the
    behaviour.""")
S_TEMP_VAR = _code("S310", "skip", "the target needs a temporary variable", """
    The target computes a value that must be stored in a new local name,
    which the emitter does not introduce.""")
S_HOIST = _code("S311", "skip", "cannot hoist or move the statement", """
    The matched statements sit in different branches or compound statements
    and the rewrite would have to move or copy one into a place the emitter
    cannot reach (across a loop, a `with` or a `try`; `if`/`elif` branches
    are crossed).""")
S_ANCHOR = _code("S312", "skip", "nothing anchors the new layer in `__init__`", """
    The new layer is built where one of the replaced init statements was;
    here none of them can be replaced (they must stay for another branch),
    so there is no place to build it.""")
S_CONTAINER = _code("S313", "skip", "layers inside a container", """
    The matched layers live in an `nn.Sequential` (or another container) in
    a way the emitter does not rewrite: built from `*args` or an
    OrderedDict, not adjacent, mixed with other code, inherited, or under a
    rule with `when` or a per-construction fallback; for `nn.ModuleList`s walked by one `zip` loop, elements
    whose pairing (same length, one element of each per position) cannot be
    proved.""")
S_WHEN_REGION = _code("S314", "skip", "a conditional init rewrite cannot duplicate its init statements", """
    A rule with `when` or a per-construction fallback copies the run of init
    statements it changes into both branches of an `if`; here they are not
    in one run, or the copy would clash with another rewrite.""")
S_GUARDED_LAYER = _code("S318", "skip", "a layer bound to `None` or `nn.Identity()` elsewhere cannot be fused under its init guard", """
    `__init__` binds the removed layer under a condition and `None` or
    `nn.Identity()` where it fails (forward calls it under `if self.<a> is
    not None:`, `if self.<a>:` or their `else:` forms, after an early `if
    self.<a> is None: return e` whose `e` is what the `return` after the
    call gives, or, for the Identity, unguarded), and the rewrite would fuse it under the condition that binds
    it (forward unchanged, `self.<a> = None` or a new `nn.Identity()`
    there); refused when the rule has `when` or its forward target is not
    its source without that call, `self.<a>` is bound to something else
    than the layer, `None` or `nn.Identity()` (or one of those may follow the
    layer, or share its statement), an unguarded call may find `None`, the
    other layers are not built unconditionally before it, some path runs one
    matched call without the other, or the value between them is read or
    may leave early.""")
S_GUARD_FALSY = _code("S319", "skip", "a bare `if self.<a>:` guard on a layer that may be falsy", """
    Forward guards the removed layer's call with the truth of its attribute
    (`if self.norm:`), which equals `is not None` only when every value the
    attribute may hold but `None` is truthy. An `nn.Module` is, unless its
    class defines `__len__` or `__bool__`: `nn.Sequential`, `nn.ModuleList`,
    `nn.ModuleDict` (and `nn.ParameterList` / `nn.ParameterDict`) are falsy
    when empty, and a class defined outside the file may define either. The
    rewrite would skip the call where the layer is falsy, so it is refused;
    `if self.norm is not None:` says what is meant.""")

S_INLINED_VALUE = _code("S317", "skip", "a target value is the result of an inlined call", """
    A variable the target uses is bound to the result of a helper method the
    analysis inlined (`self.iterative_inv(k)`): the source has no expression
    for it at the place of the rewrite, so the target cannot spell it (it
    would emit an undefined temporary name).""")

# -- S4xx: the run and the final gates ---------------------------------------
S_SAME_LOCATION = _code("S401", "skip", "same location as another match", """
    The same statements matched on several paths or call sites; they are
    edited once and the other matches are reported with this code.""")
S_OVERLAP_REWRITE = _code("S402", "skip", "overlaps another rewrite", """
    The edits of this match overlap those of a rewrite accepted earlier in
    the run (another rule, or the same rule at a nearby location).""")
S_NO_PARSE = _code("S403", "skip", "the rewrite would not parse", """
    The rewritten file would not parse, or text outside the edited statements
    would change; the gate refuses it (a dslc bug or a rule whose target is
    not valid Python at this location).""")
S_VERIFY_FAILED = _code("S404", "skip", "verification failed", """
    With `--verify`, the rewritten file was not equivalent to the original
    (see E110); all its rewrites are withdrawn.""")
S_FILE_PARSE = _code("S405", "skip", "the file does not parse", """
    The rewriter could not parse the file, so none of its matches is
    rewritten.""")
S_SUPPRESSED = _code("S406", "skip", "suppressed by a comment", """
    A line of the match carries `# dslc: ignore` (every rule) or
    `# dslc: ignore[pack:rule, ...]` naming this rule. Suppressed matches
    are counted apart in the summary and never rewritten.""")
S_CLASS_INIT = _code("S215", "skip", "the class's attributes do not fit the class item", """
    The forward of the class computes what a class item describes, but an
    attribute it reads is not what the item's init pattern needs (built by
    another type, assigned more than once or under a condition, assigned
    again by another method), or a `scalar` variable is a layer.""")
S_INIT_ALTERNATIVE = _code("S216", "skip", "a matched layer may be bound to something else", """
    `__init__` binds a matched layer's attribute to another kind of object
    on some branch (`self.bn = nn.BatchNorm2d(c) if norm else
    nn.Identity()`, or an `else:` binding another layer class) that is not
    always overwritten by the matched binding. Forward calls whichever was
    bound, so a rewrite that assumes the matched type would change (or
    break) the model where the other binding is live; an `a if c else b`
    binding would also be copied whole into the fused layer. So does a
    value of unknown type (`self.bn = norm_layer`, an argument of
    `__init__`), unless the rule has `when` (the `else` branch keeps the
    original). A removed layer bound to `None` or `nn.Identity()` elsewhere
    is not refused here: it is rewritten under its init guard, or refused
    with S318. A layer the rule keeps (init target `_`) and whose attributes
    the new forward reads is refused too where a subclass binds its
    attribute to another kind of object (`self.norm = nn.Identity()` after
    `super().__init__()`): the subclass inherits the rewritten forward.
    Not refused: a binding that z3 shows never runs where the matched
    one does (`if c: self.dense = nn.Linear(...)` / `else: self.dense =
    GroupedLinearLayer(...)`) under a rule that changes only `__init__`:
    the init edits go under `if <c>:` (with `when`'s condition), the
    original run in the `else:`; refused when the test `c` has effects or
    is not the first statement of the edited run.""")
S_CLASS_DISPATCH = _code("S315", "skip", "the class dispatch cannot be written", """
    A class item matched, but the dispatch at the top of `forward` cannot be
    placed or written: the body shares the line of the `def` or of the
    docstring, the class or its forward is not found in the file, the
    target reads an intermediate value of the original forward, or the rule
    is detect-only.""")
S_FALLBACK = _code("S316", "skip", "the guarded fallback cannot be written", """
    The rule declares what its kernel needs (`requires ... device ...`) and
    `fallback original`, but this match cannot be guarded: no `fallback`
    declared, a per-call dispatch for a call with further arguments or a
    cast, a value the dispatch needs is bound to nothing, the target calls
    nothing from the required package, or `torch` names something else.""")
S_OPTIONAL_GUARD = _code("S330", "skip", "an optional node sits under a guard the rewrite cannot drop", """
    The rule's optional node (`... optional when $m is not None`) matched a
    statement inside an `if`, and that `if` is not exactly `if m is not
    None:` around that one statement with no `else` (m the name bound to
    `$m`), or the path where the `if` is not taken does not match the rest of
    the chain: deleting the `if` with the chain would change what one of its
    paths computes.""")
S_KEEP_GUARD = _code("S331", "skip", "the per-call guard for kept values cannot be written", """
    The rule keeps intermediates for a run-time condition (`keep`), and the
    code needs one of them under a condition, but the guard `if <cond>:
    <original> else: <rewrite>` cannot be written soundly: the matched
    statements are not in one block, an `if` that updates a kept value has
    an `else`, the condition calls something, or a name it reads may change
    between the first matched statement (where the guard tests it) and the
    place the original code tests it.""")
S_GENERATED = _code("S407", "skip", "inside code that dslc generated", """
    The match lies in code an earlier `dslc apply` wrote: a dispatch helper
    (`_dslc_<pack>_<rule>`), whose call of the original function is the
    fallback, or the original branch of a per-call `keep` guard. That code
    stays as it is and is no location: the match is left out of the report
    (not found, not skipped), so a second apply reports nothing new.""")
S_NO_CAUSAL_LM_LOSS = _code("S420", "skip", "no causal-LM loss follows the head", """
    A rule with `option causal_lm` matched a head call that no labelled
    loss follows (`if <labels> is not None:` in the head's block): the call
    is no candidate, and the match is left out of the report (not found,
    not skipped), as any Linear call of the model would otherwise be.""")
S_CAUSAL_LM_FORM = _code("S421", "skip", "the causal-LM loss is not a form the rewrite follows", """
    A rule with `option causal_lm` (dslc/rewrite/kinds/causallm.py) found
    the head and a labelled loss after it, but a statement between them or
    in the loss is not one the rewrite follows (a cast, scale or final
    softcap of the logits by numbers, names or attributes, the next-token
    shift, the flattening, a default CrossEntropyLoss() and its one call),
    or a value written there is read after the loss. The message names the
    statement.""")
S_UNCLASSIFIED = _code("S499", "skip", "skipped (no code given)", """
    A skip reason produced without a code (code that predates the registry).
    Every reason dslc itself gives has a code; this one marks a gap to fill.""")


# -- E10x: files `dslc apply` cannot process safely (docs/reliability.md) -------
SPECIAL_FILE = _code("E106", "error", "not a regular file", """
    The path is a FIFO (named pipe), a character or block device, or a
    socket, possibly reached through a symlink. dslc reads only regular
    files: such a file is reported and never opened, so that a FIFO cannot
    block the run and a device such as /dev/zero cannot fill memory. Remove
    it, or leave it out with `--exclude`.""")
OUTSIDE_SYMLINK = _code("E107", "error", "symlink target outside the paths given", """
    With `--write`, the file is a symlink whose real target lies outside
    every path given on the command line; dslc does not rewrite files there
    by default (the diff is still shown without --write). Give the target's
    folder as a path too, or pass `--follow-symlinks-outside` to rewrite
    symlink targets wherever they are. A symlink given itself as a PATH
    counts as its target.""")
SYMLINK_LOOP = _code("E108", "error", "symlink loop", """
    The path is a symlink that resolves to itself, directly or through a
    chain of links (or a chain too long to resolve). It is reported and not
    followed. Remove or repair the link.""")
FILE_TOO_LARGE = _code("E109", "error", "file too large", """
    The source file is larger than `--max-file-size` (default 10M; `0`
    means no limit). It is refused before it is read; model files are far
    smaller, so this is usually generated or binary content. Raise the limit
    or leave the file out with `--exclude`.""")

# -- N1xx-N5xx: near misses (N5xx: class rules) (`dslc apply --near-misses`, `dslc explain FILE:LINE`) --
NM_NODE = _code("N101", "note", "a pattern node did not fit", """
    The place holds the rule's anchors and the pattern matched up to a node,
    but the next node of the right kind does not fit that pattern node: an
    argument is another value than the one the pattern's variable holds (the
    LayerNorm reads `x`, not the sum), or a literal differs (`dim=1` where
    the rule needs `dim=-1`). The message names the node, its line and the
    argument.""")
NM_REBOUND = _code("N102", "note", "a matched value is written again", """
    A statement between the matched nodes writes a name the match already
    bound (`y = y * 2` between the dropout and the add), so the value the
    next pattern node would read is another one. Restructure the code, or
    read the rewrite as not applicable here.""")
NM_NO_NODE = _code("N103", "note", "no later node fits the pattern", """
    The pattern matched up to a node, and no later node on any path through
    the code is of the kind the next pattern node needs (the dropout's
    result is never added to a residual before a LayerNorm).""")
NM_INIT = _code("N201", "note", "__init__ does not fit the rule's init pattern", """
    The forward pattern matched, but the layers it calls are not built the
    way the rule's init pattern needs: a constructor argument is refuted
    (`affine=False` where the rule needs `affine=True`, `bias=False`), a
    lookup key differs (`ACT2FN[config.activation_function]` where the rule
    takes `config.hidden_act`), or the arguments are unknown (unpacked from
    a `**kwargs` dict the analysis cannot read).""")
NM_WHERE = _code("N301", "note", "a `where` constraint does not hold", """
    Every pattern node matched, but a `where` constraint of the rule is
    refuted by the values at this place.""")
NM_NOT_CALLED = _code("N401", "note", "the rule's layer is never called here", """
    The class builds the layer the rule starts from in `__init__`, but no
    analyzed path of `forward` calls it (it is called through a container,
    by another module, or not at all), or builds it inside a container the
    analysis does not follow into layers (`nn.Sequential(*[...])`, an
    `OrderedDict`, `ModuleList.append(nn.Sequential(...))`), or builds it in
    a method as a local value (`loss_fct = CrossEntropyLoss()` in `forward`)
    where the rule starts from a layer bound in `__init__`.""")
NM_NO_ATTEMPT = _code("N402", "note", "no attempt got past the rule's anchor", """
    The place holds the rule's anchor and names, but no match attempt from
    the anchor got further (a leading wildcard found nothing to match).""")
NM_NOT_A_COPY = _code("N403", "note", "the file's own function has the name of the rule's function", """
    The rule names a library function (`transformers.models.llama.
    modeling_llama.apply_rotary_pos_emb`), and this file calls a function of
    its own with that name.  A word-for-word copy of the library function
    counts as the library function (analysis/copies.py); this one differs
    (another body, another helper it calls, another decorator), so what it
    computes is not known to be what the kernel computes, and the rule does
    not apply.""")
NM_NO_NODE_FOR_CALL = _code("N404", "note", "the rule's anchor call is in code the analysis keeps whole", """
    The function calls the rule's anchor (`k.transpose(-1, -2)`,
    `torch.einsum(...)`), but no analysed path holds that call as a node, so
    no pattern is tried there. The message says why: the call is inside a
    lambda, a comprehension or a conditional expression; it is a tensor
    method called on a value the analysis does not follow (the result of
    another method, `k.reshape(...).transpose(-1, -2)`); it sits in a loop
    or block the analysis keeps as one statement; or the function is on no
    analysed path (forward does not call it). Spelling the value as a local
    name first (`k = k.reshape(...)`, then `k.transpose(-1, -2)`) lets the
    rule see it.""")
NM_NOT_ANALYSED = _code("N405", "note", "the place was not fully analysed (match budget)", """
    The function holding the place has so many paths, and the packs so
    many rules anchored in it, that trying them all ran past the matching
    budget (docs/performance.md); the warning W105 names the function. No
    rule of the pack is matched there (nothing is rewritten in it), so
    whether this rule would fit is unknown. Splitting the function (fewer
    branches over the anchors) brings it under the budget.""")
NM_CLASS_SHAPE = _code("N501", "note", "the class's forward is not one expression", """
    The class holds the distinctive operations of a class rule (`pow`,
    `mean` and `rsqrt` for an RMS norm; an activation times a Linear for a
    gated MLP), but its `forward` is not straight-line code (a branch, a
    loop, a tuple target, a call with `*args`, an expression statement):
    a class rule replaces the whole computation, so it needs forward to be
    assignments to plain names and one final `return`. The message names
    the first statement that is not. Move the branch out of the layer (or
    into two classes) to let the rule apply.""")
NM_CLASS_NODE = _code("N502", "note", "a node of the class's forward does not fit the class rule", """
    The class's forward is one expression and holds the rule's distinctive
    operations, but unifying it with the rule's pattern (from the returned
    value backwards) stops at a node: another operation than the pattern
    node's (`self.weight + h` where the rule multiplies by the weight, no
    `+ eps` before `rsqrt`), a literal that differs (`mean(1)` where the
    rule needs `mean(-1)`), or a value that is not the one the pattern's
    variable holds (the weight is a local tensor, not an attribute built in
    __init__; no cast back to the input dtype after a float32 round trip).
    The message names the node, its line and the pattern node.""")
NM_CLASS_EXTRA = _code("N503", "note", "the class's forward computes more than the class rule", """
    Every node of the rule's pattern matched, but forward computes
    something the pattern has no node for (an extra op in between, such as
    a dropout or a clamp, or a value computed and never used), so replacing
    the whole computation would drop it. The message names the node.""")
NM_CLASS_INPUTS = _code("N504", "note", "the class's forward takes other inputs than the class rule", """
    The class holds the rule's distinctive operations, but its forward
    takes another number of inputs than the rule's `forward(...)` (an extra
    argument such as a residual or a mask), so its call sites do not fit
    the kernel's signature.""")
W_NEAR_MISS_FAILED = _code("W199", "warning", "the near-miss report of a file failed", """
    Computing the near misses of one file raised an exception: a bug in
    dslc. The file's matches and rewrites are reported as usual; only its
    near misses are missing. Please report it with the file.""")


def lookup(code: str) -> Code | None:
    return REGISTRY.get(code.strip().upper())
