"""Parse `.adr` text into the syntax tree (`dslc.lang.syntax`), never raising.

Algorithm (`parse_source`):
1. Refuse inputs over `source.MAX_SOURCE_BYTES` (ADR005) before lexing.
2. Run the LALR parser (built once per process from `grammar_path()`), with
   the tree builder attached as its inline transformer: each grammar rule is
   turned into a syntax node the moment it is reduced, so no recursive tree
   walk is needed, however deep the input nests.
3. The builder caps expression depth (ADR006): deeper sub-expressions are
   replaced by a placeholder, keeping every later pass (printer, checker,
   `==`) far from Python's recursion limit.
4. A lark error becomes one located diagnostic: unexpected token ("expected
   one of ..." in friendly names, the closest keyword suggested), unexpected
   end of file, invalid character, or an unknown section keyword inside a
   rule body (ADR102).
5. Recovery: the text before the next `rule` line after the error is blanked
   (newlines kept, so positions hold) and parsed again, up to
   MAX_SYNTAX_ERRORS times, so each broken rule reports its own error.
   When every error lies inside a rule, the file without those rules is
   parsed once more and its tree returned (beside the syntax errors), so the
   checker reports the other rules' problems too; the file is still never
   loaded (it has errors).  Otherwise a file with a syntax error has no tree.
"""

from __future__ import annotations

import ast as _pyast
import copy
import difflib
import re
import importlib.resources
import threading
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from dslc.lang import syntax as S
from dslc import codes
from dslc.lang.diagnostics import Diagnostic, diag
from dslc.match.ir import Span
from dslc.lang.source import MAX_SOURCE_BYTES, SourceFile, decode, normalize_newlines

# Sub-expressions nested deeper than this are refused (ADR006).
MAX_DEPTH = 100

SECTIONS = ("kernel", "exact", "tolerance", "init", "forward", "where", "when",
            "params", "option", "note", "safe", "unsafe", "requires", "fallback", "keep", "class")


def grammar_path():
    """Where the grammar is installed (the one place that knows)."""
    return importlib.resources.files("dslc.grammar") / "adr.lark"


@dataclass
class ParseResult:
    file: S.File | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    source: SourceFile | None = None


# ---------------------------------------------------------------------------
# The parser, built once per process.

_LOCK = threading.Lock()


class _Context:
    """Per-parse state read by the (shared) inline transformer."""

    def __init__(self) -> None:
        self.path = ""
        self.diagnostics: list[Diagnostic] = []
        self.depth: dict[int, int] = {}
        self.too_deep = False


_CTX = _Context()


@lru_cache(maxsize=1)
def _lark() -> Lark:
    text = grammar_path().read_text(encoding="utf-8")
    # cache=True: lark keeps the LALR tables in the temp dir (keyed by the
    # grammar text), so a fresh process skips the table construction.
    return Lark(text, parser="lalr", lexer="contextual", transformer=_Builder(),
                propagate_positions=False, maybe_placeholders=True, cache=True)


class _NotFast(Exception):
    """The fast loop met a syntax error (lark's parse reports it)."""


@dataclass(frozen=True)
class _Tables:
    """`_lark()`'s LALR table and contextual lexer, flattened for `_fast_parse`.

    `actions[state]`: terminal or rule name -> the next state (a shift or a
    goto, an int) or `(size, callback, rule name)` (a reduce, with lark's
    own tree-builder callback).  `lexers[state]`: the `match` of the state's
    lark scanner regex (all its terminals, in lark's order) and its ignored
    terminals.
    """

    actions: dict
    lexers: dict
    start: int
    end: int


@lru_cache(maxsize=1)
def _tables() -> _Tables | None:
    from lark.parsers.lalr_analysis import Shift

    frontend = _lark().parser
    table = frontend.parser._parse_table
    callbacks = frontend.parser.parser.callbacks
    if any(isinstance(k, str) for k in callbacks):  # terminal callbacks: not handled here
        return None
    (start,) = frontend.parser_conf.start
    actions, lexers = {}, {}
    for state, row in table.states.items():
        actions[state] = {name: arg if action is Shift else _reduce(arg, callbacks[arg])
                          for name, (action, arg) in row.items()}
        lexer = frontend.lexer.lexers[state]
        if len(lexer.scanner._mres) != 1 or lexer.callback:  # a split regex, string callbacks: lark's way
            return None
        lexers[state] = (lexer.scanner._mres[0].match, lexer.ignore_types)
    return _Tables(actions, lexers, table.start_states[start], table.end_states[start])


def _reduce(rule, callback) -> tuple:
    """A reduce action: `(size, callback, rule name)`; the callback is None
    for a `?rule` of one symbol (lark's `ExpandSingleChild` would hand the
    one child back: `?expr: sum`, `?sum: product`, ...)."""
    from lark.parse_tree_builder import ChildFilter, ExpandSingleChild

    size = len(rule.expansion)
    if size == 1 and isinstance(callback, ExpandSingleChild):
        callback = None
    elif rule.origin.name.startswith("_") and not hasattr(_Builder, rule.origin.name):
        # An inlined rule (lark's `__block_star_6` repetitions): the parent's
        # child filter splices its `.children` in; a `Tree` is not needed.
        if isinstance(callback, ChildFilter):
            callback = copy.copy(callback)
            callback.node_builder = _Children
        else:
            callback = _Children
    return size, callback, rule.origin.name


class _Children:
    """The value of an inlined rule: only its `children` are read."""

    __slots__ = ("children",)

    def __init__(self, children):
        self.children = children


def _fast_parse(text: str):
    """`_lark().parse(text)` without lark's per-token machinery.

    Reading the rule packs is mostly lexing and LALR steps (sdpa.adr: some
    170 000 tokens); this loop does what lark's contextual lexer and
    `ParserState.feed_token` do -- the same per-state regexes, the same
    table, the same tree-builder callbacks, the same tokens (type, value,
    positions) -- with the table flattened to plain dicts (no `Rule`
    hashing) and no generator, line counter or lexer-state objects.  On a
    syntax error it raises `_NotFast`: the caller parses again with lark,
    whose exception the diagnostics are built from.
    """
    tables = _tables()
    if tables is None:
        return _lark().parse(text)
    actions, lexers, end = tables.actions, tables.lexers, tables.end
    new = str.__new__
    states, values = [tables.start], []
    pos, n, line, line_start = 0, len(text), 1, 0
    tok = None
    while True:
        match, ignore = lexers[states[-1]]
        ttype = None
        while pos < n:
            m = match(text, pos)
            if m is None:
                raise _NotFast
            value, ttype = m.group(0), m.lastgroup
            start, start_line, col = pos, line, pos - line_start + 1
            newlines = value.count("\n")
            if newlines:
                line += newlines
                line_start = pos + value.rindex("\n") + 1
            pos += len(value)
            if ttype in ignore:
                ttype = None
                continue
            tok = new(Token, value)
            tok.type, tok.value, tok.start_pos, tok.line, tok.column = ttype, value, start, start_line, col
            tok.end_line, tok.end_column, tok.end_pos = line, pos - line_start + 1, pos
            break
        is_end = ttype is None
        if is_end:
            ttype = "$END"
            tok = Token.new_borrow_pos("$END", "", tok) if tok is not None else Token("$END", "", 0, 1, 1)
        state = states[-1]
        while True:
            act = actions[state].get(ttype)
            if act is None:
                raise _NotFast
            if act.__class__ is int:
                states.append(act)
                values.append(tok)
                break
            size, callback, origin = act
            if callback is None:  # the child is the value
                del states[-1]
                state = actions[states[-1]][origin]
                states.append(state)
                if is_end and state == end:
                    return values[-1]
                continue
            if size:
                children = values[-size:]
                del states[-size:]
                del values[-size:]
            else:
                children = []
            result = callback(children)
            state = actions[states[-1]][origin]
            states.append(state)
            values.append(result)
            if is_end and state == end:
                return result


def parse_source(text: str, path: str = "<string>") -> ParseResult:
    """Parse rule text; see the module docstring for the steps."""
    text = normalize_newlines(text)
    source = SourceFile(path, text)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        d = diag(codes.TOO_LARGE,
                 f"file too large ({len(text)} characters; the limit is {MAX_SOURCE_BYTES} bytes)",
                 Span(path, 1, 1, 1, 1))
        return ParseResult(None, [d], source)
    with _LOCK:
        tree, diagnostics, failed = _parse_locked(text, source)
        # Recovery: after a syntax error, blank out everything before the
        # next line that starts a rule (keeping newlines, so positions stay
        # right) and parse again, so each broken rule reports its own error.
        errors = [failed] if failed is not None else []
        for _ in range(MAX_SYNTAX_ERRORS - 1):
            if failed is None:
                break
            sync = _next_rule_start(text, failed)
            if sync is None:
                break
            masked = _BLANK.sub(" ", text[:sync]) + text[sync:]
            _, more, failed = _parse_locked(masked, source)
            diagnostics.extend(more)
            if failed is not None:
                errors.append(failed)
        if tree is None and errors and failed is None:
            tree = _without_broken_rules(text, errors, source)
    if tree is None:
        return ParseResult(None, diagnostics, source)
    file = S.File(tree.headers, tree.requires, tree.rules, path=path,
                  span=Span(path, 1, 1, *source.position(len(text))))
    return ParseResult(file, diagnostics, source)


# At most this many syntax errors are reported per file.
MAX_SYNTAX_ERRORS = 10
_BLANK = re.compile(r"[^\n]")
_RULE_LINE = re.compile(r"^[ \t]*rule\b", re.MULTILINE)


def _without_broken_rules(text: str, errors: list[int], source: SourceFile):
    """The tree of the file with every rule that holds a syntax error blanked.

    So that the checker still reports the other rules' problems (one error
    does not hide the rest of the file).  The file keeps its syntax errors,
    so it is never loaded; None when an error lies outside any rule (the
    header, a `requires` line) or the rest does not parse either.
    """
    starts = [m.start() for m in _RULE_LINE.finditer(text)]
    masked = text
    for offset in errors:
        before = [st for st in starts if st <= offset]
        if not before:
            return None
        start = before[-1]
        end = _next_rule_start(text, offset)
        end = len(text) if end is None else end
        masked = masked[:start] + _BLANK.sub(" ", masked[start:end]) + masked[end:]
    tree, diagnostics, failed = _parse_locked(masked, source)
    if failed is not None or tree is None or not tree.rules:
        return None
    return tree


def _next_rule_start(text: str, error_offset: int) -> int | None:
    """Offset of the first line after the error's line that starts a rule."""
    line_end = text.find("\n", error_offset)
    if line_end < 0:
        return None
    m = _RULE_LINE.search(text, line_end + 1)
    return m.start() if m else None


def _parse_locked(text: str, source: SourceFile):
    """One parse (caller holds _LOCK): (tree or None, diagnostics, offset of
    the syntax error or None)."""
    path = source.path
    _CTX.path, _CTX.diagnostics, _CTX.depth, _CTX.too_deep = path, [], {}, False
    tree = error = None
    try:
        try:
            tree = _fast_parse(text)
        except _NotFast:  # a syntax error: lark's own parse says which
            _CTX.diagnostics, _CTX.depth, _CTX.too_deep = [], {}, False
            tree = _lark().parse(text)
    except UnexpectedInput as exc:
        error = exc
    except RecursionError:  # not expected (no recursion), but never crash
        _CTX.diagnostics.append(diag(codes.TOO_DEEP, "input nested too deeply", Span(path, 1, 1, 1, 1)))
    except Exception as exc:  # a bug in the builder: report it, do not crash
        _CTX.diagnostics.append(diag(codes.SYNTAX, f"internal parser error: {type(exc).__name__}: {exc}",
                                     Span(path, 1, 1, 1, 1), help="please report this input as a dslc bug"))
    diagnostics = list(_CTX.diagnostics)
    failed = None
    if error is not None:
        diagnostics.append(_syntax_diagnostic(error, source))
        failed = _error_offset(error, text)
    _CTX.depth = {}
    return (tree if error is None else None), diagnostics, failed


def _error_offset(exc: UnexpectedInput, text: str) -> int:
    if isinstance(exc, UnexpectedCharacters):
        return exc.pos_in_stream
    tok = getattr(exc, "token", None)
    if tok is not None and tok.type != "$END" and tok.start_pos is not None:
        return tok.start_pos
    return len(text)


def parse_bytes(data: bytes, path: str) -> ParseResult:
    if len(data) > MAX_SOURCE_BYTES:
        d = diag(codes.TOO_LARGE,
                 f"file too large ({len(data)} bytes; the limit is {MAX_SOURCE_BYTES})",
                 Span(path, 1, 1, 1, 1))
        return ParseResult(None, [d], None)
    text = decode(data)
    if not isinstance(text, str):
        span = Span(path, text.line, text.col, text.line, text.col + 1)
        d = diag(codes.DECODE, text.message, span,
                 help="rule files are UTF-8 text; is this the right file?")
        return ParseResult(None, [d], None)
    return parse_source(text, path)


# ---------------------------------------------------------------------------
# Syntax errors


_FRIENDLY = {
    "NAME": "a name",
    "VAR": "a variable `$name`",
    "ATTR_REF": "an attribute `$var.attr`",
    "NUMBER": "a number",
    "STRING": "a string",
    "$END": "end of file",
    "_ARROW": "`->`",
    "_ARROW2": "`=>`",
    "_LARROW": "`<-`",
    "NOTHING": "`_`",
    "ELLIPSIS": "`...`",
    "EXACT": "`exact`",
    "DETERMINISTIC": "`deterministic`",
    "TRUE": "`True`",
    "FALSE": "`False`",
    "NONE": "`None`",
}


def _keyword_of(terminal: str) -> str | None:
    """The keyword a terminal stands for (`_KW_KERNEL` -> `kernel`), else None."""
    if terminal.startswith("_KW_"):
        return terminal[4:].lower()
    if terminal.startswith("KW_"):
        return terminal[3:].lower()
    word = _FRIENDLY.get(terminal, "")
    if word.startswith("`") and word[1:-1].isalpha():
        return word[1:-1]
    return None


@lru_cache(maxsize=1)
def _terminal_names() -> dict[str, str]:
    names = dict(_FRIENDLY)
    for term in _lark().terminals:
        if term.name in names:
            continue
        if _keyword_of(term.name):
            names[term.name] = f"`{_keyword_of(term.name)}`"
        elif term.pattern.type == "str":
            names[term.name] = f"`{term.pattern.value}`"
        else:
            names[term.name] = term.name.lower()
    return names


def _friendly(expected) -> str:
    names = _terminal_names()
    # After a node's outputs the `optional when ...` suffix may come too; it is
    # rare, and the usual fix is a `;`: it is not listed beside others.
    expected = [t for t in expected if t != "_KW_OPTIONAL"] or list(expected)
    shown = sorted({names.get(t, t) for t in expected})
    # Keywords last, punctuation and classes first: easier to read.
    shown.sort(key=lambda s: (s.startswith("`") and s[1:-1].isalpha(), s))
    if len(shown) > 12:
        shown = shown[:12] + ["..."]
    return ", ".join(shown)


def _token_text(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    value = str(tok.value)
    if len(value) > 30:
        value = value[:27] + "..."
    return f"`{value}`"


def _syntax_diagnostic(exc: UnexpectedInput, source: SourceFile) -> Diagnostic:
    path = source.path
    if isinstance(exc, UnexpectedCharacters):
        line, col = exc.line, exc.column
        ch = source.text[exc.pos_in_stream] if exc.pos_in_stream < len(source.text) else ""
        span = Span(path, line, col, line, col + 1)
        if ch == "$":
            return diag(codes.BAD_CHARACTER, "`$` must be followed by a variable name", span,
                        label="expected a name here", help="variables are written `$name`")
        if ch in "\"'":
            return diag(codes.BAD_CHARACTER, "unterminated string", span,
                        label="string starts here", help="strings end on the line they start")
        shown = repr(ch) if ch.isprintable() and ch else f"U+{ord(ch):04X}" if ch else "?"
        if ch in "<>~!" and "STRING" in (exc.allowed or ()):
            return diag(codes.BAD_CHARACTER, f"invalid character {shown}", span,
                        label="a version range must be quoted",
                        help='write the range as a string: requires pkg ">=0.1,<1"')
        return diag(codes.BAD_CHARACTER, f"invalid character {shown}", span,
                    label="not part of any token",
                    help=f"expected one of: {_friendly(exc.allowed or ())}" if exc.allowed else None)
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        line, col = source.position(len(source.text))
        span = Span(path, line, col, line, col + 1)
        expected = exc.expected if isinstance(exc, UnexpectedEOF) else exc.expected
        return diag(codes.UNEXPECTED_EOF, "unexpected end of file", span,
                    label="file ends here", help=f"expected one of: {_friendly(expected)}")
    assert isinstance(exc, UnexpectedToken)
    tok = exc.token
    end_line = tok.end_line or tok.line
    end_col = tok.end_column or tok.column + len(str(tok.value))
    span = Span(path, tok.line, tok.column, end_line, end_col)
    expected = _accepted(exc)
    if tok.type == "NAME":
        # A misspelt keyword is the usual cause: suggest the closest one.
        word = str(tok.value)
        words = _keywords(expected)
        close = difflib.get_close_matches(word, words, n=1)
        if "_KW_KERNEL" in expected and not (close and close[0] not in SECTIONS):
            hint = f"did you mean `{close[0]}`?" if close else "sections: " + ", ".join(SECTIONS)
            return diag(codes.UNKNOWN_SECTION, f"unknown section `{word}` in rule body", span,
                        label="not a section keyword", help=hint)
        if close:
            return diag(codes.SYNTAX, f"unexpected `{word}`", span, label="unexpected here",
                        help=f"did you mean `{close[0]}`? (expected one of: {_friendly(expected)})")
    notes = ()
    if "SEMICOLON" in expected and tok.type in ("NAME", "VAR", "STAR", "MINUS"):
        before = source.line_text(tok.line)[: tok.column - 1].split("#", 1)[0]
        if before.strip():
            notes = ("is a `;` missing before it?",)
        elif _previous_token_line(source, tok) is not None:
            notes = ("is a `;` missing at the end of the previous line?",)
    return diag(codes.SYNTAX, f"unexpected {_token_text(tok)}", span,
                label="unexpected here", notes=notes,
                help=f"expected one of: {_friendly(expected)}")


def _keywords(expected) -> list[str]:
    """The keywords among the terminals `expected`."""
    return sorted(k for k in (_keyword_of(t) for t in expected) if k)


def _accepted(exc: UnexpectedToken) -> set[str]:
    """The terminals that really can come next.

    LALR's merged states list more lookaheads than are valid (a reduction
    would fail later); ask the interactive parser, which tries each one.
    """
    ip = getattr(exc, "interactive_parser", None)
    if ip is None:
        return set(exc.expected)
    saved = (list(_CTX.diagnostics), _CTX.too_deep)
    try:
        return set(ip.accepts()) or set(exc.expected)
    except Exception:  # lark internals: fall back to the raw lookahead set
        return set(exc.expected)
    finally:
        _CTX.diagnostics[:], _CTX.too_deep = saved


def _previous_token_line(source: SourceFile, tok: Token) -> int | None:
    """Line of the last non-blank, non-comment text before `tok`."""
    for line in range(tok.line - 1, 0, -1):
        text = source.line_text(line).split("#", 1)[0].strip()
        if text:
            return line
    return None


# ---------------------------------------------------------------------------
# The tree builder


def _tok_span(tok: Token) -> Span:
    return Span(_CTX.path, tok.line, tok.column, tok.end_line or tok.line,
                tok.end_column or tok.column + len(tok))


def _span_of(x) -> Span | None:
    if isinstance(x, Token):
        return _tok_span(x)
    return getattr(x, "span", None)


def _join(*parts) -> Span | None:
    """From the start of the first part that has a place to the end of the
    last one (tokens are read in place: no span is built for them)."""
    for first in parts:
        if isinstance(first, Token):
            line, col = first.line, first.column
            break
        span = getattr(first, "span", None)  # None too
        if span is not None:
            line, col = span.line, span.col
            break
    else:
        return None
    for last in reversed(parts):
        if isinstance(last, Token):
            return Span(_CTX.path, line, col, last.end_line or last.line, last.end_column or last.column + len(last))
        span = getattr(last, "span", None)
        if span is not None:
            return Span(_CTX.path, line, col, span.end_line, span.end_col)


def _number(tok: Token):
    """The value of a NUMBER token; out-of-range numbers are diagnosed."""
    text = str(tok)
    try:
        value = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:  # more digits than Python converts
        value = None
    if value is None or value in (float("inf"), float("-inf")):
        _CTX.diagnostics.append(diag(codes.BAD_CHARACTER, "number out of range", _tok_span(tok),
                                     label="too large", help="write a smaller number"))
        return 0
    return value


def _unquote(tok: Token) -> str:
    """A string token's value (Python escapes; an invalid one is diagnosed)."""
    inner = str(tok)[1:-1]
    if "\\" not in inner and inner.isprintable():  # no escape: the text itself
        return inner
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # `"\q"` is a warning in Python, an error here
            value = _pyast.literal_eval(str(tok))
    except (ValueError, SyntaxError, Warning):
        _CTX.diagnostics.append(diag(codes.BAD_CHARACTER, "invalid escape sequence in string",
                                     _tok_span(tok)))
        return str(tok)[1:-1]
    return value if isinstance(value, str) else str(value)


def _deep(node, *children):
    """Record the depth of `node`; past MAX_DEPTH, replace it by a placeholder."""
    depth = 1 + max((_CTX.depth.get(id(c), 0) for c in children), default=0)
    if depth > MAX_DEPTH:
        if not _CTX.too_deep:
            _CTX.too_deep = True
            _CTX.diagnostics.append(diag(
                codes.TOO_DEEP, f"expression nested more than {MAX_DEPTH} levels deep",
                node.span, label="too deep",
                help="split the expression into several pattern nodes"))
        return S.Const(None, span=node.span)
    _CTX.depth[id(node)] = depth
    return node


def _no_tokens(children):
    return [c for c in children if not isinstance(c, Token) and c is not None]


class _Builder(Transformer):
    """Grammar rule -> syntax node (runs inline, during parsing)."""

    # -- file ------------------------------------------------------------------
    def start(self, items):
        headers = tuple(i for i in items if isinstance(i, S.PackHeader))
        requires = tuple(i for i in items if isinstance(i, S.Requires))
        rules = tuple(i for i in items if isinstance(i, S.Rule))
        return _FileParts(headers, requires, rules)

    def pack_header(self, c):
        name, desc = c
        return S.PackHeader(str(name), _unquote(desc), span=_join(name, desc),
                            name_span=_tok_span(name))

    def pkg_name(self, c):
        return c  # list of tokens, joined by `requires`

    def requires(self, c):
        toks = c[0]
        package = "".join(str(t) for t in toks)
        version = module = install = None
        for part in c[1:]:
            if isinstance(part, Token) and part.type == "STRING":
                version = S.Const(_unquote(part), span=_tok_span(part))
            elif isinstance(part, S.Name):
                module = part
            elif isinstance(part, S.Const):
                install = part
        pspan = _join(toks[0], toks[-1])
        return S.Requires(package, version, module, install,
                          span=_join(toks[0], *(p for p in c[1:] if p is not None)), package_span=pspan)

    def requires_module(self, c):
        return c[0]

    def requires_install(self, c):
        return S.Const(_unquote(c[0]), span=_tok_span(c[0]))

    # -- rules ---------------------------------------------------------------
    def rule(self, c):
        name, desc, *clauses = c
        return S.Rule(str(name), _unquote(desc), tuple(clauses),
                      span=_join(name, desc, *clauses), name_span=_tok_span(name))

    def kernel(self, c):
        return S.Kernel(c[0], span=c[0].span)

    def exact(self, c):
        det = len(c) > 1 and c[1] is not None
        return S.Exact(det, span=_join(*[x for x in c if x is not None]))

    def tolerance(self, c):
        args = tuple(x for x in c if isinstance(x, S.TolArg))
        det = any(isinstance(x, Token) and x.type == "DETERMINISTIC" for x in c)
        return S.Tolerance(args, det, span=_join(*[x for x in c if x is not None]))

    def tol_arg(self, c):
        name, value = c
        return S.TolArg(str(name), value, span=_join(name, value))

    def dtype_tolerance(self, c):
        dtypes = tuple(x for x in c if isinstance(x, S.DtypeTol))
        det = any(isinstance(x, Token) and x.type == "DETERMINISTIC" for x in c)
        return S.DtypeTolerance(dtypes, det, span=_join(*[x for x in c if x is not None]))

    def tol_dtype(self, c):
        name, *args = c
        return S.DtypeTol(str(name), tuple(args), span=_join(name, *args))

    def safe_clause(self, c):
        return S.Safety("safe", span=_tok_span(c[0]))

    def unsafe_clause(self, c):
        return S.Safety("unsafe", span=_tok_span(c[0]))

    def rule_requires(self, c):
        toks = c[0]
        package = "".join(str(t) for t in toks)
        device = var = dspan = None
        rest = c[1:]
        if rest:
            device, var = str(rest[0]), rest[1]
            dspan = _tok_span(rest[0])
        pspan = _join(toks[0], toks[-1])
        return S.RuleRequires(package, device, var, span=_join(toks[0], toks[-1], *(x for x in rest if x is not None)),
                              package_span=pspan, device_span=dspan)

    def fallback(self, c):
        return S.Fallback(str(c[0]), span=_tok_span(c[0]))

    def keep(self, c):
        return S.Keep(tuple(c), span=_join(*c))

    def class_item(self, c):
        init = scalars = None
        inputs, forward, fspan = (), (), None
        target = tspan = None
        parts = [x for x in c if x is not None]
        for x in parts[:-1]:
            if isinstance(x, _ClassInit):
                init = x.block.nodes
            elif isinstance(x, _ClassScalars):
                scalars = x.vars
            elif isinstance(x, _ClassForward):
                inputs, forward, fspan = x.inputs, x.block.nodes, x.span
        last = parts[-1]
        if isinstance(last, Token):
            tspan = _tok_span(last)
        else:
            target, tspan = last.nodes, last.span
        span = None
        if fspan is not None and tspan is not None:
            span = Span(fspan.path, fspan.line, fspan.col, tspan.end_line, tspan.end_col)
        return S.ClassItem(init, tuple(scalars or ()), inputs, forward, target,
                           span=span or fspan, target_span=tspan, forward_span=fspan)

    def class_init(self, c):
        return _ClassInit(c[0])

    def class_scalar(self, c):
        return _ClassScalars(tuple(x for x in c if isinstance(x, S.Var)))

    def class_forward(self, c):
        inputs = tuple(x for x in c if isinstance(x, S.Var))
        block = next(x for x in c if isinstance(x, _Block))
        lpar = next((x for x in c if isinstance(x, Token)), None)
        return _ClassForward(inputs, block, _join(lpar, *inputs, *block.nodes))

    def init_item(self, c):
        return S.Section("init", c[0], span=c[0].span)

    def forward_item(self, c):
        return S.Section("forward", c[0], span=c[0].span)

    def item(self, c):
        source, target = c
        if isinstance(target, Token):  # `_`
            return S.Item(source.nodes, None, span=_join(source, target), target_span=_tok_span(target))
        return S.Item(source.nodes, target.nodes, span=_join(source, target), target_span=target.span)

    def block(self, c):
        nodes = tuple(n for n in c if isinstance(n, (S.Node, S.Wildcard)))
        return _Block(nodes, _join(*nodes) if nodes else None)

    def node_bare(self, c):
        return S.Node(c[0], (), span=_span_of(c[0]))

    def node_out(self, c):
        expr, outs = c
        return S.Node(expr, outs, span=_join(expr, *outs))

    def node_optional(self, c):
        expr, outs, when = c
        return S.Node(expr, outs, span=_join(expr, *outs, when), optional=when)

    def optional_clause(self, c):
        return next(x for x in c if isinstance(x, S.Var))

    def wildcard(self, c):
        outs = next((x for x in c if isinstance(x, tuple)), ())
        star = next((x for x in c if isinstance(x, Token)), None)
        return S.Wildcard(outs, span=_join(star, *outs))

    def outputs(self, c):
        return tuple(c)

    # -- expressions ---------------------------------------------------------
    def binop(self, c):
        left, op, right = c
        return _deep(S.BinOp(str(op), left, right, span=_join(left, right)), left, right)

    def unop(self, c):
        op, operand = c
        # `-1` is a negative constant; `-(-1)` stays a unary minus.
        if isinstance(operand, S.Const) and type(operand.value) in (int, float) \
                and not str(operand.value).startswith("-"):
            return S.Const(-operand.value, span=_join(op, operand))
        return _deep(S.UnaryOp(str(op), operand, span=_join(op, operand)), operand)

    def paren(self, c):
        inner = _no_tokens(c)[0]
        return inner

    def name_ref(self, c):
        return c[0]

    def call(self, c):
        callee, lpar, args, rpar = c
        args = tuple(args or ())
        return _deep(S.Call(callee, args, span=_join(callee, rpar)), callee, *(a.value for a in args))

    def subscript(self, c):
        container, key = c
        node = S.Subscript(container, key, span=_join(container, key))
        return _deep(node, key)

    def args(self, c):
        return [a for a in c if isinstance(a, S.Arg)]

    def pos_arg(self, c):
        v = c[0]
        return _deep_arg(S.Arg(None, v, span=_span_of(v)), v)

    def kw_arg(self, c):
        name, v = c
        return _deep_arg(S.Arg(str(name), v, span=_join(name, v)), v)

    def rest_arg(self, c):
        return S.Arg(None, None, rest=True, span=_tok_span(c[0]))

    # -- where / when --------------------------------------------------------
    def where(self, c):
        return S.Where(tuple(c), span=_join(*c))

    def c_eq(self, c):
        var, _, value = c
        return S.Constraint(var, "==", (value,), span=_join(var, value))

    def c_ne(self, c):
        var, _, value = c
        return S.Constraint(var, "!=", (value,), span=_join(var, value))

    def c_in(self, c):
        var, values = c
        return S.Constraint(var, "in", values.items, span=_join(var, values))

    def c_not_in(self, c):
        var, values = c
        return S.Constraint(var, "not in", values.items, span=_join(var, values))

    def const_tuple(self, c):
        items = tuple(x for x in c if isinstance(x, (S.Const, S.Name)))
        return S.TupleLit(items, span=_join(*items) if items else None)

    def cond_tuple(self, c):
        items = tuple(x for x in c if isinstance(x, S.Const))
        return S.TupleLit(items, span=_join(c[0], c[-1]))

    def when(self, c):
        return S.When(c[0], span=_span_of(c[0]))

    def cond_or(self, c):
        left, right = c
        return _deep(S.BoolOp("or", left, right, span=_join(left, right)), left, right)

    def cond_and(self, c):
        left, right = c
        return _deep(S.BoolOp("and", left, right, span=_join(left, right)), left, right)

    def cond_not(self, c):
        return _deep(S.Not(c[0], span=_span_of(c[0])), c[0])

    def cond_cmp(self, c):
        left, op, right = c
        return _deep(S.Compare(str(op), left, right, span=_join(left, right)), left, right)

    def cond_in(self, c):
        left, right = c
        return _deep(S.Compare("in", left, right, span=_join(left, right)), left, right)

    def cond_not_in(self, c):
        left, right = c
        return _deep(S.Compare("not in", left, right, span=_join(left, right)), left, right)

    # -- params, options, notes ----------------------------------------------
    def params(self, c):
        maps = tuple(m for m in c if isinstance(m, S.ParamMap))
        return S.Params(maps, span=_join(*maps) if maps else None)

    def param_map(self, c):
        target, source = c
        return S.ParamMap(target, source, span=_join(target, source))

    def option(self, c):
        name, value = c
        return S.Option(str(name), value, span=_join(name, value), name_span=_tok_span(name))

    def note(self, c):
        return S.Note(_unquote(c[0]), span=_tok_span(c[0]))

    # -- terms ---------------------------------------------------------------
    def var(self, c):
        tok = c[0]
        return S.Var(str(tok)[1:], span=_tok_span(tok))

    def attr_ref(self, c):
        tok = c[0]
        base, _, path = str(tok)[1:].partition(".")
        span = _tok_span(tok)
        var_span = Span(span.path, span.line, span.col, span.line, span.col + 1 + len(base))
        return S.AttrRef(S.Var(base, span=var_span), path, span=span)

    def qualname(self, c):
        return S.Name(".".join(str(t) for t in c), span=_join(c[0], c[-1]))

    def number(self, c):
        return S.Const(_number(c[0]), span=_tok_span(c[0]))

    def neg_number(self, c):
        return S.Const(-_number(c[1]), span=_join(c[0], c[1]))

    def string(self, c):
        return S.Const(_unquote(c[0]), span=_tok_span(c[0]))

    def true(self, c):
        return S.Const(True, span=_span_of(c[0]) if c else None)

    def false(self, c):
        return S.Const(False, span=_span_of(c[0]) if c else None)

    def none(self, c):
        return S.Const(None, span=_span_of(c[0]) if c else None)


def _deep_arg(arg: S.Arg, value):
    # Arguments do not add a level, but carry their value's depth upwards.
    if id(value) in _CTX.depth:
        _CTX.depth[id(arg)] = _CTX.depth[id(value)]
    return arg


@dataclass(frozen=True, slots=True)
class _ClassInit:
    block: object


@dataclass(frozen=True, slots=True)
class _ClassScalars:
    vars: tuple


@dataclass(frozen=True, slots=True)
class _ClassForward:
    inputs: tuple
    block: object
    span: Span | None


@dataclass(frozen=True, slots=True)
class _Block:
    nodes: tuple
    span: Span | None


@dataclass(frozen=True, slots=True)
class _FileParts:
    headers: tuple
    requires: tuple
    rules: tuple
