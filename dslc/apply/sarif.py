"""`dslc apply --format sarif`: the report as a SARIF 2.1.0 log.

One run (tool `dslc`, one `rules` entry per selected rule); one result per
match and per near miss (when the report has them):

* applied matches are `warning`s (a kernel can be put in), with the rewrite
  as a SARIF `fix`: the changed hunks of the file (as `replacements` over
  character offsets of the original text).  A file's hunks are given to the
  applied match whose lines they touch; hunks no match's lines touch (the
  import block, a helper) go to the file's first applied match, so that
  applying every fix of a file gives the rewritten file;
* skipped matches are `note`s whose message is the reason, with the code in
  `properties.code` (`dslc explain CODE`); a match held back by
  `# dslc: ignore` carries an in-source `suppressions` entry;
* file errors are `toolExecutionNotifications` of the invocation.

Paths are relative to the current folder where possible (`uriBaseId`
`%SRCROOT%`), like the diff headers.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

from dslc import __version__
from dslc import codes
from dslc.fileio import source_lines
from dslc.apply.report import diff_path

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _uri(path: str) -> str:
    return path.replace(os.sep, "/")


def _line_starts(text: str) -> list[int]:
    starts, pos = [0], 0
    for line in source_lines(text, keepends=True):
        pos += len(line)
        starts.append(pos)
    return starts


def _hunks(old: str, new: str) -> list[tuple[int, int, dict]]:
    """(first old line, last old line (1-based, inclusive), replacement) per changed block."""
    a, b = source_lines(old, keepends=True), source_lines(new, keepends=True)
    starts = _line_starts(old)
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        offset = starts[i1]
        length = starts[i2] - starts[i1]
        replacement = {"deletedRegion": {"charOffset": offset, "charLength": length}}
        inserted = "".join(b[j1:j2])
        if inserted:
            replacement["insertedContent"] = {"text": inserted}
        out.append((i1 + 1, max(i1 + 1, i2), replacement))
    return out


def _location(uri: str, lines) -> dict:
    lines = sorted(lines) or [1]
    return {"physicalLocation": {
        "artifactLocation": {"uri": uri, "uriBaseId": "%SRCROOT%"},
        "region": {"startLine": max(1, lines[0]), "endLine": max(1, lines[-1])},
    }}


def to_sarif(report, packs=()) -> dict:
    rules_meta = {r.qualified_name: r for p in packs for r in p.rules}
    rule_ids = list(report.rules)
    index = {r: i for i, r in enumerate(rule_ids)}
    results = []
    for f in report.files:
        uri = _uri(diff_path(f))
        fixes: dict[int, list[dict]] = {}
        applied = [i for i, m in enumerate(f.matches) if m.status == "applied"]
        if f.changed and applied:
            for lo, hi, rep in _hunks(f.original, f.new_source):
                owner = next((i for i in applied if any(lo <= n <= hi for n in f.matches[i].lines)), applied[0])
                fixes.setdefault(owner, []).append(rep)
        for i, m in enumerate(f.matches):
            result = {
                "ruleId": m.rule,
                "level": "warning" if m.status == "applied" else "note",
                "message": {"text": _message(m, rules_meta.get(m.rule))},
                "locations": [_location(uri, m.lines)],
                "properties": {"status": m.status, "class": m.class_name, "function": m.function},
            }
            if m.rule in index:
                result["ruleIndex"] = index[m.rule]
            if m.code:
                result["properties"]["code"] = m.code
            if m.code == codes.S_SUPPRESSED:
                result["suppressions"] = [{"kind": "inSource", "justification": m.reason or ""}]
            if i in fixes:
                result["fixes"] = [{
                    "description": {"text": f"apply {m.rule}"},
                    "artifactChanges": [{"artifactLocation": {"uri": uri, "uriBaseId": "%SRCROOT%"},
                                         "replacements": fixes[i]}],
                }]
            results.append(result)
    for nm in getattr(report, "near_misses", None) or ():  # with --near-misses: places a rule did not fit
        if getattr(nm, "kind", "unmatched") != "unmatched":
            continue  # a skipped match: already a result above
        result = {
            "ruleId": nm.rule,
            "level": "note",
            "message": {"text": f"near miss{' in ' + nm.class_name if nm.class_name else ''}: {nm.reason}"},
            "locations": [_location(_uri(_near_path(report, nm.file)), [nm.line] if nm.line else [])],
            "properties": {"status": "near-miss", "class": nm.class_name, "function": nm.function},
        }
        if nm.rule in index:
            result["ruleIndex"] = index[nm.rule]
        if getattr(nm, "code", None):
            result["properties"]["code"] = nm.code
        results.append(result)
    notifications = [{
        "level": "error",
        "message": {"text": e.message},
        "descriptor": {"id": e.code},
        "locations": [_location(_uri(e.file), [e.line] if e.line else [])],
    } for e in report.errors]
    driver = {
        "name": "dslc",
        "version": __version__,
        "informationUri": "https://pypi.org/project/dslc/",
        "rules": [_rule_meta(r, rules_meta.get(r)) for r in rule_ids],
    }
    run = {
        "tool": {"driver": driver},
        "invocations": [{"executionSuccessful": not report.errors,
                         "toolExecutionNotifications": notifications}],
        "originalUriBaseIds": {"%SRCROOT%": {"uri": Path.cwd().as_uri().rstrip("/") + "/"}},
        "results": results,
    }
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}


def _near_path(report, display: str) -> str:
    """A near miss names its file as reported (`display`): the same path as its file's results."""
    for f in report.files:
        if f.found.display == display:
            return diff_path(f)
    return display


def _message(m, rule) -> str:
    what = getattr(rule, "description", "") or m.rule
    where = f" in {m.class_name}" if m.class_name else ""
    if m.status == "applied":
        return f"{what}{where}: a kernel can replace this code ({m.rule})"
    return f"{what}{where}: skipped [{m.code or codes.S_UNCLASSIFIED}]: {m.reason or 'no reason given'}"


def _rule_meta(name: str, rule) -> dict:
    meta = {"id": name}
    desc = getattr(rule, "description", "") if rule is not None else ""
    if desc:
        meta["shortDescription"] = {"text": desc}
    kernels = list(getattr(rule, "kernels", ()) or ()) if rule is not None else []
    if kernels:
        meta["properties"] = {"kernels": kernels}
    return meta


def render_sarif(report, packs=()) -> str:
    return json.dumps(to_sarif(report, packs), indent=2) + "\n"
