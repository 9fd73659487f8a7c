"""The registry of diagnostic codes: stable identifiers with their docs.

A code never changes meaning once released.  Ranges:
ADR0xx syntax and input, ADR1xx structure (sections, options, contracts),
ADR2xx variables and data flow, ADR3xx `requires` and versions,
ADR4xx rule selection.  `dslc explain CODE` prints `Code.doc`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    severity: str  # error | warning
    title: str
    doc: str


REGISTRY: dict[str, Code] = {}


def _code(code: str, severity: str, title: str, doc: str) -> str:
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
    the rule acknowledges, e.g. "ADR209"; errors cannot be allowed).""")
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

# -- ADR4xx: selection -----------------------------------------------------------
UNKNOWN_SELECT = _code("ADR401", "error", "unknown rule selection", """
    `--select pack:rule` (or `pack` alone, or `rule` alone) names no loaded
    pack or rule.""")


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

# -- N1xx-N4xx: near misses (`dslc apply --near-misses`, `dslc explain FILE:LINE`) --
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
    by another module, or not at all).""")
NM_NO_ATTEMPT = _code("N402", "note", "no attempt got past the rule's anchor", """
    The place holds the rule's anchor and names, but no match attempt from
    the anchor got further (a leading wildcard found nothing to match).""")
W_NEAR_MISS_FAILED = _code("W199", "warning", "the near-miss report of a file failed", """
    Computing the near misses of one file raised an exception: a bug in
    dslc. The file's matches and rewrites are reported as usual; only its
    near misses are missing. Please report it with the file.""")


def lookup(code: str) -> Code | None:
    return REGISTRY.get(code.strip().upper())
