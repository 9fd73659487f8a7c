"""Issue 8 item 12, the rest: a removed layer `__init__` binds under a
condition, and to `None` or `nn.Identity()` where the condition fails.

1. Forward guards on the attribute besides `if self.a is not None:` (tests in
   test_complete_issue8.py): the bare `if self.a:`, and the `else:` of `if
   self.a is None:` / `if not self.a:`.  The bare forms mean `is not None`
   only when every other value of the attribute is truthy; a layer whose
   class defines `__len__` / `__bool__` (or whose class is unknown) is
   refused (S319).
2. The `nn.Identity()` branch: forward calls the layer unguarded; the fused
   layer is built under the init guard and the attribute becomes a new
   `nn.Identity()` there.
3. A matched layer bound to a value of unknown type on another branch
   (`self.bn = norm_layer`, an argument of `__init__`): refused (S216); the
   rewrites dslc wrote before are shown wrong in torch.

Each model is small and written for the test; torch compares the rewritten
module with the original (same state_dict, both init branches, train and
eval).
"""

from __future__ import annotations

import inspect

import pytest

from dslc.analysis import analyze_source
from dslc.rewrite.kinds.guardforms import TORCH_NN_NOT_MODULES, TORCH_NN_SIZED, truthy_reason
from rewrite_support import REMAP_HOOK, assert_rewrite, load_module, run

HOOK_ROWS = '''            self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
                ('conv.0.weight', 'conv.weight', False),
                ('conv.0.bias', 'conv.bias', False),
                ('conv.1.weight', 'norm.weight', False),
                ('conv.1.bias', 'norm.bias', False),
                ('conv.1.running_mean', 'norm.running_mean', False),
                ('conv.1.running_var', 'norm.running_var', False),
                ('conv.1.num_batches_tracked', 'norm.num_batches_tracked', False),
            )))
'''

HEAD = '''import torch
from torch import nn
'''
HEAD_AFTER = '''import torch
from torch import nn
from torch.ao.nn.intrinsic import ConvBn2d
''' + REMAP_HOOK


def _statuses(result, rule="conv_batchnorm"):
    return [(m.class_name, m.status, m.code, m.reason) for m in result.matches if m.rule.endswith(":" + rule)]


def same_in_torch(before: str, after: str, name: str, flag: str, *, strict_keys_on_false: bool = True):
    """Build the original and the rewrite with `flag` True and False, load
    the original's state_dict (perturbed weights and statistics) into the
    rewrite, and compare the outputs in eval and in train mode (and the
    running statistics after a training step)."""
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    old_ns, new_ns = vars(load_module(before, "old")), vars(load_module(after, "new"))
    for value in (True, False):
        torch.manual_seed(0)
        old = old_ns[name](3, 4, **{flag: value})
        new = new_ns[name](3, 4, **{flag: value})
        with torch.no_grad():
            for p in old.parameters():
                p.uniform_(-1, 1)
            for key, b in old.named_buffers():
                if "running" in key:
                    b.uniform_(0.5, 1.5)
        new.load_state_dict(old.state_dict(), strict=True)
        if not value and strict_keys_on_false:
            # where the condition fails nothing changed, keys included
            assert list(new.state_dict()) == list(old.state_dict())
        x = torch.randn(2, 3, 8, 8)
        for train in (False, True):
            old.train(train)
            new.train(train)
            torch.testing.assert_close(new(x), old(x))
        old_stats = sorted(v.sum().item() for k, v in old.state_dict().items() if "running" in k)
        new_stats = sorted(v.sum().item() for k, v in new.state_dict().items() if "running" in k)
        assert new_stats == pytest.approx(old_stats)


# ---------------------------------------------------------------------------
# 1. guards on the attribute

BARE = HEAD + '''

class ConvNorm(nn.Module):
    def __init__(self, cin, cout, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        if use_norm:
            self.norm = nn.BatchNorm2d(cout)
        else:
            self.norm = None
        self.act = nn.ReLU()

    def forward(self, x):
        x = self.conv(x)
        if self.norm:
            x = self.norm(x)
        return self.act(x)
'''

BARE_INIT_AFTER = '''        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        if use_norm:
            self.conv = ConvBn2d(self.conv, nn.BatchNorm2d(cout))
            self.norm = None
''' + HOOK_ROWS + '''        else:
            self.norm = None
'''

BARE_INIT = '''        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        if use_norm:
            self.norm = nn.BatchNorm2d(cout)
        else:
            self.norm = None
'''


def after_of(before: str) -> str:
    """`before` with the init edit of the guarded kind (forward unchanged)."""
    assert BARE_INIT in before
    return HEAD_AFTER + before[len(HEAD):].replace(BARE_INIT, BARE_INIT_AFTER)


def test_bare_guard_is_fused_under_the_init_guard():
    assert_rewrite(BARE, after_of(BARE), applied=["conv_batchnorm"])
    same_in_torch(BARE, after_of(BARE), "ConvNorm", "use_norm")


ELSE_FORMS = {
    "is None, pass": "        if self.norm is None:\n            pass\n        else:\n            x = self.norm(x)\n",
    "not, pass": "        if not self.norm:\n            pass\n        else:\n            x = self.norm(x)\n",
    "is None, copy": "        if self.norm is None:\n            y = x\n        else:\n            y = self.norm(x)\n",
    "not, copy": "        if not self.norm:\n            y = x\n        else:\n            y = self.norm(x)\n",
}


@pytest.mark.parametrize("form", sorted(ELSE_FORMS))
def test_else_forms_are_fused_under_the_init_guard(form):
    before = BARE.replace("        if self.norm:\n            x = self.norm(x)\n", ELSE_FORMS[form])
    if "copy" in form:
        before = before.replace("return self.act(x)", "return self.act(y)")
    assert before != BARE
    assert_rewrite(before, after_of(before), applied=["conv_batchnorm"])
    same_in_torch(before, after_of(before), "ConvNorm", "use_norm")



# The early-return form: `if self.a is None: return E` right before the
# call's statement, then `return R`; where the fused layer runs `self.a` is
# None and `return E` gives what `return R` gave after the removed call.
GUARDED_CALL = "        if self.norm:\n            x = self.norm(x)\n        return self.act(x)\n"
EARLY_FORMS = {
    "is None": "        if self.norm is None:\n            return self.act(x)\n        x = self.norm(x)\n        return self.act(x)\n",
    "not": "        if not self.norm:\n            return self.act(x)\n        x = self.norm(x)\n        return self.act(x)\n",
    "another name": "        if self.norm is None:\n            return self.act(x) * 2\n        y = self.norm(x)\n        return self.act(y) * 2\n",
}


@pytest.mark.parametrize("form", sorted(EARLY_FORMS))
def test_early_return_forms_are_fused_under_the_init_guard(form):
    before = BARE.replace(GUARDED_CALL, EARLY_FORMS[form])
    assert before != BARE
    assert_rewrite(before, after_of(before), applied=["conv_batchnorm"])
    same_in_torch(before, after_of(before), "ConvNorm", "use_norm")


@pytest.mark.parametrize("tail, why", [
    # what follows the call is not the early return: the fused layer would skip it
    ("        if self.norm is None:\n            return x\n        x = self.norm(x)\n        return self.act(x)\n",
     "`return self.act(x)` (line 20) is not the early `return x`"),
    ("        if self.norm is None:\n            return self.act(x)\n        x = self.norm(x)\n        x = x + 1\n"
     "        return self.act(x)\n", "is not followed by a `return`"),
    # the return after the call also reads the value before it
    ("        if self.norm is None:\n            return x\n        y = self.norm(x)\n        return y + x\n",
     "`return y + x` (line 20) is not the early `return x` with `y` read as `x`"),
    # the early return reads the attribute
    ("        if self.norm is None:\n            return x if self.norm is None else -x\n        x = self.norm(x)\n"
     "        return x if self.norm is None else -x\n", "the early `return` reads `self.norm`"),
])
def test_early_return_forms_that_do_not_return_the_same_are_refused(tail, why):
    torch = pytest.importorskip("torch", reason="torch shows the refused rewrite would differ")
    before = BARE.replace(GUARDED_CALL, tail)
    assert before != BARE
    assert_rewrite(before, skipped=[("conv_batchnorm", "S318", why)])
    # what the init-only rewrite would compute where the layer exists: the
    # conv followed by the norm, then the early return
    m = vars(load_module(before, "early"))["ConvNorm"](3, 4)
    with torch.no_grad():
        m.norm.running_mean.uniform_(-1, 1)
    m.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = m(x)
    m.conv, m.norm = torch.nn.Sequential(m.conv, m.norm), None
    assert not torch.allclose(m(x), expected)


@pytest.mark.parametrize("guard, expected", [
    # the branch without the call does something else
    ("        if self.norm is None:\n            x = x * 2\n        else:\n            x = self.norm(x)\n",
     ("S318", "is not `pass` or `x = x`")),
    # the value before the call is read after it (the copy keeps it alive)
    ("        if not self.norm:\n            y = x\n        else:\n            y = self.norm(x)\n        y = y + x\n",
     ("S204", "intermediate `x`")),
    # a guard that is more than the attribute: read as no guard, and `None` may be called
    ("        if self.norm and self.training:\n            x = self.norm(x)\n",
     ("S318", "outside `if self.norm is not None:`")),
    # an `else:` that does something when the layer is there
    ("        if self.norm:\n            x = self.norm(x)\n        else:\n            x = x * 2\n",
     ("S318", "the `if` holds more than the call")),
])
def test_guard_form_refusals(guard, expected):
    before = BARE.replace("        if self.norm:\n            x = self.norm(x)\n", guard)
    assert before != BARE
    assert_rewrite(before, skipped=[("conv_batchnorm", *expected)])


def test_none_called_without_a_guard_is_refused():
    # the original fails where `use_norm` is false; the rewrite must not "fix" it
    before = BARE.replace("        if self.norm:\n            x = self.norm(x)\n", "        x = self.norm(x)\n")
    assert_rewrite(before, skipped=[("conv_batchnorm", "S318", "binds it to `None` at line 12")])
    eager = BARE.replace("        if self.norm:\n            x = self.norm(x)\n", "        x = self.norm(x) if self.norm is not None else x\n")
    # the test of the attribute shares the call's statement
    assert_rewrite(eager, skipped=[("conv_batchnorm", "S207", "line 17 also uses `self.norm`")])


# A rule whose removed layer is a class of the file: its truth is what
# `if self.norm:` tests.
USER_PACK = '''pack local "guard tests"

rule conv_mynorm "Conv2d then MyNorm -> one Sequential" {
  kernel torch.nn.Sequential
  exact deterministic
  init {
    torch.nn.Conv2d(...) -> $conv;
    model.MyNorm(...) -> $norm;
  } => {
    torch.nn.Sequential($conv, $norm) -> $conv;
  }
  forward {
    $conv($x) -> $h;
    $norm($h) -> $o;
  } => {
    $conv($x) -> $o;
  }
}
'''

USER = HEAD + '''

class MyNorm(BASE):
    def __init__(self, c):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(c))
DUNDER
    def forward(self, x):
        return x * self.scale[:, None, None]


class ConvNorm(nn.Module):
    def __init__(self, cin, cout, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        if use_norm:
            self.norm = MyNorm(cout)
        else:
            self.norm = None

    def forward(self, x):
        x = self.conv(x)
        if self.norm:
            x = self.norm(x)
        return x
'''

LEN = "\n    def __len__(self):\n        return 0\n"
BOOL = "\n    def __bool__(self):\n        return False\n"


def user_model(base="nn.Module", dunder=""):
    return USER.replace("BASE", base).replace("DUNDER", dunder)


@pytest.mark.parametrize("base, dunder, why", [
    ("nn.Module", LEN, "`MyNorm` defines `__len__`"),
    ("nn.Module", BOOL, "`MyNorm` defines `__bool__`"),
    ("nn.ModuleList", "", "`ModuleList` defines `__len__`"),
    ("Base", "", "the class `MyNorm` is not analysed here"),
])
def test_bare_guard_on_a_layer_that_may_be_falsy_is_refused(tmp_path, base, dunder, why):
    pack = tmp_path / "local.adr"
    pack.write_text(USER_PACK)
    source = user_model(base, dunder)
    if base == "Base":
        source = source.replace("from torch import nn\n", "from torch import nn\nfrom elsewhere import Base\n")
    result = run(source, rules=(str(pack),))
    assert [(s[1], s[2]) for s in _statuses(result, "conv_mynorm")] == [("skipped", "S319")]
    assert why in _statuses(result, "conv_mynorm")[0][3]
    # with `is not None` the same place is rewritten
    plain = run(source.replace("if self.norm:", "if self.norm is not None:"), rules=(str(pack),))
    assert [s[1] for s in _statuses(plain, "conv_mynorm")] == ["applied"]


def test_bare_guard_on_a_user_layer_that_is_always_truthy_is_rewritten(tmp_path):
    pack = tmp_path / "local.adr"
    pack.write_text(USER_PACK)
    result = run(user_model(), rules=(str(pack),))
    assert [s[1] for s in _statuses(result, "conv_mynorm")] == ["applied"]
    assert "self.conv = nn.Sequential(self.conv, MyNorm(cout))\n            self.norm = None\n" in result.new_source


def test_the_falsy_refusal_was_a_wrong_rewrite(tmp_path):
    # What accepting the bare guard would write (the `is not None` rewrite
    # with forward left as it was): where the layer is falsy the original
    # skips it and the rewrite runs it.
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    pack = tmp_path / "local.adr"
    pack.write_text(USER_PACK)
    before = user_model(dunder=LEN)
    plain = run(before.replace("if self.norm:", "if self.norm is not None:"), rules=(str(pack),)).new_source
    would_be = plain.replace("if self.norm is not None:", "if self.norm:")
    old, new = load_module(before, "old").ConvNorm(3, 4), load_module(would_be, "new").ConvNorm(3, 4)
    with torch.no_grad():
        old.norm.scale.fill_(2.0)
        new.conv[0].load_state_dict(old.conv.state_dict())
        new.conv[1].load_state_dict(old.norm.state_dict())
    x = torch.randn(1, 3, 8, 8)
    assert not torch.allclose(new(x), old(x))
    torch.testing.assert_close(new(x), 2.0 * old(x))


def test_truthiness_lists_agree_with_torch():
    torch = pytest.importorskip("torch", reason="the lists describe torch.nn")
    facts = analyze_source("import torch\n", "/tmp/empty/model.py")
    for name, value in sorted(vars(torch.nn).items()):
        if not inspect.isclass(value):
            continue
        module = issubclass(value, torch.nn.Module)
        sized = module and any("__len__" in vars(c) or "__bool__" in vars(c) for c in value.__mro__ if c is not object)
        assert (name in TORCH_NN_SIZED) == sized, name
        assert (name in TORCH_NN_NOT_MODULES) == (not module), name
        assert (truthy_reason(f"torch.nn.{name}", facts.classes) is None) == (module and not sized), name
    assert truthy_reason("torch.nn.functional.relu", facts.classes) is not None
    assert truthy_reason(None, facts.classes) is not None


def test_truthiness_follows_the_bases_in_the_file():
    source = HEAD + '''
class Sized(nn.Module):
    def __len__(self):
        return 0


class Plain(nn.Module):
    pass


class FromSized(Sized):
    pass


class FromPlain(Plain):
    pass
'''
    classes = analyze_source(source, "/tmp/truthy/model.py").classes
    assert truthy_reason("model.FromPlain", classes) is None
    assert truthy_reason("model.Plain", classes) is None
    assert "`Sized` defines `__len__`" in truthy_reason("model.FromSized", classes)


# ---------------------------------------------------------------------------
# 2. the nn.Identity() branch

IDENTITY = HEAD + '''

class ConvNorm(nn.Module):
    def __init__(self, cin, cout, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        if use_norm:
            self.norm = nn.BatchNorm2d(cout)
        else:
            self.norm = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))
'''

IDENTITY_AFTER = HEAD_AFTER + '''

class ConvNorm(nn.Module):
    def __init__(self, cin, cout, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        if use_norm:
            self.conv = ConvBn2d(self.conv, nn.BatchNorm2d(cout))
            self.norm = nn.Identity()
''' + HOOK_ROWS + '''        else:
            self.norm = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))
'''


def test_identity_branch_is_fused_under_the_init_guard():
    assert_rewrite(IDENTITY, IDENTITY_AFTER, applied=["conv_batchnorm"])
    same_in_torch(IDENTITY, IDENTITY_AFTER, "ConvNorm", "use_norm")


IDENTITY_FIRST = HEAD + '''

class ConvNorm(nn.Module):
    def __init__(self, cin, cout, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm = nn.Identity()
        if use_norm:
            self.norm = nn.BatchNorm2d(cout)

    def forward(self, x):
        h = self.conv(x)
        h = self.norm(h)
        return torch.relu(h)
'''


def test_identity_bound_first_is_fused_under_the_init_guard():
    after = _identity_first_after()
    assert_rewrite(IDENTITY_FIRST, after, applied=["conv_batchnorm"])
    same_in_torch(IDENTITY_FIRST, after, "ConvNorm", "use_norm")


def _identity_first_after() -> str:
    return HEAD_AFTER + '''

class ConvNorm(nn.Module):
    def __init__(self, cin, cout, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm = nn.Identity()
        if use_norm:
            self.conv = ConvBn2d(self.conv, nn.BatchNorm2d(cout))
            self.norm = nn.Identity()
''' + HOOK_ROWS + '''
    def forward(self, x):
        h = self.conv(x)
        h = self.norm(h)
        return torch.relu(h)
'''


def test_identity_with_an_is_not_none_guard_becomes_none():
    before = IDENTITY.replace("        return self.act(self.norm(self.conv(x)))\n",
                              "        x = self.conv(x)\n        if self.norm is not None:\n"
                              "            x = self.norm(x)\n        return self.act(x)\n")
    result = run(before)
    assert [s[1] for s in _statuses(result)] == ["applied"]
    assert "            self.conv = ConvBn2d(self.conv, nn.BatchNorm2d(cout))\n            self.norm = None\n" \
        in result.new_source
    same_in_torch(before, result.new_source, "ConvNorm", "use_norm")


@pytest.mark.parametrize("old, new, expected", [
    # the conv's output is read again: under the guard it would hold the normalised value
    ("        return self.act(self.norm(self.conv(x)))\n",
     "        h = self.conv(x)\n        return self.act(self.norm(h)) + h\n", ("S204", "intermediate `h`")),
    # a second call of the conv in the statement would run the fused layer
    ("        return self.act(self.norm(self.conv(x)))\n",
     "        return self.act(self.norm(self.conv(x))) + self.conv(x)\n", ("S207", "also uses `self.conv`")),
    # the Identity may replace the BatchNorm after it is built
    ("        else:\n            self.norm = nn.Identity()\n",
     "        if cin == cout:\n            self.norm = nn.Identity()\n", ("S318", "may run after the layer's binding")),
    # another layer on the other branch of `a if c else b`
    ("        if use_norm:\n            self.norm = nn.BatchNorm2d(cout)\n        else:\n            self.norm = nn.Identity()\n",
     "        self.norm = nn.BatchNorm2d(cout) if use_norm else nn.GroupNorm(1, cout)\n",
     ("S216", "builds a `BatchNorm2d` on one branch only: the other is `GroupNorm(...)`")),
    # `a if c else b` nested: not one layer or the other
    ("        if use_norm:\n            self.norm = nn.BatchNorm2d(cout)\n        else:\n            self.norm = nn.Identity()\n",
     "        self.norm = nn.BatchNorm2d(cout) if use_norm else (nn.Identity() if cin else nn.Identity())\n",
     ("S318", "is not one layer or the other")),
    # an Identity built where it is not the other branch of the condition, plus None
    ("        else:\n            self.norm = nn.Identity()\n",
     "        elif cin == cout:\n            self.norm = nn.Identity()\n        else:\n            self.norm = None\n",
     ("S318", "binds it to `None`")),
])
def test_identity_refusals(old, new, expected):
    before = IDENTITY.replace(old, new)
    assert before != IDENTITY
    assert_rewrite(before, skipped=[("conv_batchnorm", *expected)])


IFEXP_INIT = "        self.norm = nn.BatchNorm2d(cout) if use_norm else nn.Identity()\n"
IFEXP_INIT_AFTER = '''        if use_norm:
            self.conv = ConvBn2d(self.conv, nn.BatchNorm2d(cout))
            self.norm = nn.Identity()
''' + HOOK_ROWS + '''        else:
            self.norm = nn.Identity()
'''
IDENTITY_INIT = ("        if use_norm:\n            self.norm = nn.BatchNorm2d(cout)\n"
                 "        else:\n            self.norm = nn.Identity()\n")


@pytest.mark.parametrize("init, init_after", [
    (IFEXP_INIT, IFEXP_INIT_AFTER),
    # the mirror: the layer on the `else` side
    ("        self.norm = nn.Identity() if not use_norm else nn.BatchNorm2d(cout)\n",
     "        if not use_norm:\n            self.norm = nn.Identity()\n        else:\n"
     + IFEXP_INIT_AFTER.split("        else:\n")[0].replace("        if use_norm:\n", "")),
    # over several lines
    ("        self.norm = (\n            nn.BatchNorm2d(cout)\n            if use_norm\n            else nn.Identity()\n        )\n",
     IFEXP_INIT_AFTER),
])
def test_identity_in_an_if_expression_becomes_an_if_statement(init, init_after):
    before = IDENTITY.replace(IDENTITY_INIT, init)
    after = IDENTITY_AFTER.replace(IFEXP_INIT_AFTER, init_after)
    assert before != IDENTITY and (after != IDENTITY_AFTER or init_after == IFEXP_INIT_AFTER)
    assert_rewrite(before, after, applied=["conv_batchnorm"])
    same_in_torch(before, after, "ConvNorm", "use_norm")


def test_none_in_an_if_expression_with_a_guarded_call():
    before = IDENTITY.replace(IDENTITY_INIT, "        self.norm = nn.BatchNorm2d(cout) if use_norm else None\n").replace(
        "        return self.act(self.norm(self.conv(x)))\n",
        "        x = self.conv(x)\n        if self.norm is not None:\n            x = self.norm(x)\n        return self.act(x)\n")
    result = run(before)
    assert [s[1] for s in _statuses(result)] == ["applied"]
    assert ("        if use_norm:\n            self.conv = ConvBn2d(self.conv, nn.BatchNorm2d(cout))\n"
            "            self.norm = None\n") in result.new_source
    assert "        else:\n            self.norm = None\n        self.act = nn.ReLU()\n" in result.new_source
    same_in_torch(before, result.new_source, "ConvNorm", "use_norm")


# ---------------------------------------------------------------------------
# 3. a matched layer bound to a value of unknown type on another branch

UNKNOWN = HEAD + '''

class ElseArgument(nn.Module):
    def __init__(self, cin, cout, norm_layer=None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        if norm_layer is None:
            self.norm = nn.BatchNorm2d(cout)
        else:
            self.norm = norm_layer

    def forward(self, x):
        return self.norm(self.conv(x))


class LaterArgument(nn.Module):
    def __init__(self, cin, cout, norm_layer=None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout)
        if norm_layer is not None:
            self.norm = norm_layer

    def forward(self, x):
        return self.norm(self.conv(x))
'''


def test_a_layer_bound_to_an_argument_on_a_branch_is_refused():
    assert_rewrite(UNKNOWN, skipped=[
        ("conv_batchnorm", "S216", "`self.norm` is also bound to `norm_layer` (line 12) where `not (norm_layer is None)`, "
                                   "a value of unknown type"),
        ("conv_batchnorm", "S216", "`self.norm` is also bound to `norm_layer` (line 24)"),
    ])


# What dslc wrote for ElseArgument before the refusal (the conv fused with a
# fresh BatchNorm everywhere, the argument's layer never called).
ELSE_ARGUMENT_BEFORE_THE_FIX = HEAD_AFTER + '''

class ElseArgument(nn.Module):
    def __init__(self, cin, cout, norm_layer=None):
        super().__init__()
        self.conv = ConvBn2d(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout))
        if norm_layer is None:
''' + HOOK_ROWS + '''        else:
            self.norm = norm_layer

    def forward(self, x):
        return self.conv(x)
'''

# A guard in an expression, and what dslc wrote for it before (the conv
# skipped where the layer is None, `self.norm` read where it is not bound).
EAGER = BARE.replace("        x = self.conv(x)\n        if self.norm:\n            x = self.norm(x)\n",
                     "        x = self.conv(x)\n        x = self.norm(x) if self.norm is not None else x\n")
EAGER_BEFORE_THE_FIX = HEAD_AFTER + '''

class ConvNorm(nn.Module):
    def __init__(self, cin, cout, use_norm=True):
        super().__init__()
        self.conv = ConvBn2d(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout))
        if use_norm:
''' + HOOK_ROWS + '''        else:
            self.norm = None
        self.act = nn.ReLU()

    def forward(self, x):
        x = self.conv(x) if self.norm is not None else x
        return self.act(x)
'''


def test_the_refused_unknown_and_eager_rewrites_were_wrong():
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    old_ns = vars(load_module(UNKNOWN, "old"))
    new_ns = vars(load_module(ELSE_ARGUMENT_BEFORE_THE_FIX, "new"))
    torch.manual_seed(0)
    old = old_ns["ElseArgument"](3, 4, norm_layer=nn_group_norm(torch))
    new = new_ns["ElseArgument"](3, 4, norm_layer=nn_group_norm(torch))
    new.load_state_dict(old.state_dict(), strict=False)
    x = torch.randn(2, 3, 8, 8)
    assert not torch.allclose(new.eval()(x), old.eval()(x))
    # the eager guard: where the layer is built the rewrite reads a deleted
    # attribute, where it is not the conv is skipped
    eager_old, eager_new = vars(load_module(EAGER, "old")), vars(load_module(EAGER_BEFORE_THE_FIX, "new"))
    with pytest.raises(AttributeError):
        eager_new["ConvNorm"](3, 4, use_norm=True)(x)
    plain_old, plain_new = eager_old["ConvNorm"](3, 4, use_norm=False), eager_new["ConvNorm"](3, 4, use_norm=False)
    assert plain_new(x).shape[1] == 3 and plain_old(x).shape[1] == 4  # the conv did not run


def nn_group_norm(torch):
    return torch.nn.GroupNorm(2, 4)


# Under a rule with `when` the `else:` of `if <when>:` keeps the original, and
# a value of unknown type on another branch is allowed (transformers'
# `else: self.act = config.hidden_act`) only where `when` excludes it.
WHEN_ARGUMENT = '''import torch
from torch import nn
from transformers.activations import ACT2FN


class Inter(nn.Module):
    def __init__(self, config, custom_act=None):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        if custom_act is None:
            self.act = ACT2FN[config.hidden_act]
        else:
            self.act = custom_act

    def forward(self, x):
        return self.act(self.dense(x))
'''

# What dslc wrote for it before the refusal (less the checkpoint hook, which
# it registered only where `custom_act is None`): with `gelu_new` and a
# `custom_act`, the Linear loses its bias and nothing adds it back.
WHEN_ARGUMENT_BEFORE_THE_FIX = '''import torch
from torch import nn
from transformers.activations import ACT2FN
from epoi.ops.torchscript_ops import FusedBiasGELU


class Inter(nn.Module):
    def __init__(self, config, custom_act=None):
        super().__init__()
        if config.hidden_act in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_accurate"):
            self.dense = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
            if custom_act is None:
                self.act = FusedBiasGELU(config.intermediate_size, prev_weight=self.dense.weight)
            else:
                self.act = custom_act
        else:
            self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
            if custom_act is None:
                self.act = ACT2FN[config.hidden_act]
            else:
                self.act = custom_act

    def forward(self, x):
        return self.act(self.dense(x))
'''


def test_a_when_rule_with_an_argument_on_a_branch_the_condition_allows_is_refused():
    result = run(WHEN_ARGUMENT)
    got = _statuses(result, "biased_gelu")
    assert [(s[1], s[2]) for s in got] == [("skipped", "S216")], got
    assert "`self.act` is also bound to `custom_act` (line 13), a value of unknown type" in got[0][3]
    # the transformers spelling: the condition's strings imply `isinstance(..., str)`
    for init in ("        if isinstance(config.hidden_act, str):\n            self.act = ACT2FN[config.hidden_act]\n"
                 "        else:\n            self.act = config.hidden_act\n",
                 "        self.act = ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) "
                 "else config.hidden_act\n"):
        source = WHEN_ARGUMENT.replace(
            "        if custom_act is None:\n            self.act = ACT2FN[config.hidden_act]\n"
            "        else:\n            self.act = custom_act\n", init)
        assert source != WHEN_ARGUMENT
        assert [s[1] for s in _statuses(run(source), "biased_gelu")] == ["applied"]


def test_the_refused_when_rewrite_was_wrong(monkeypatch):
    torch = pytest.importorskip("torch", reason="torch runs the two versions")
    pytest.importorskip("transformers", reason="the model reads ACT2FN")
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    # the reference kernels stand in for epoi while the module is loaded, and
    # are gone after (other tests check the packs against what is importable)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "kernel_refs"))
    for name in [n for n in sys.modules if n.split(".")[0] == "epoi"]:
        monkeypatch.delitem(sys.modules, name)
    config = SimpleNamespace(hidden_size=4, intermediate_size=6, hidden_act="gelu_new")
    old = load_module(WHEN_ARGUMENT, "old").Inter(config, custom_act=torch.nn.Tanh())
    try:
        new = load_module(WHEN_ARGUMENT_BEFORE_THE_FIX, "new").Inter(config, custom_act=torch.nn.Tanh())
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "epoi"]:
            del sys.modules[name]
    with torch.no_grad():
        old.dense.bias.fill_(0.5)
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    assert unexpected == ["dense.bias"] and not missing
    x = torch.randn(2, 4)
    assert not torch.allclose(new(x), old(x))


def test_none_on_another_branch_of_a_layer_the_rewrite_keeps_is_refused():
    # only the removed layer (`$bn`) is rewritten under its init guard; the
    # conv, which the rewrite replaces, may not be None on a branch
    before = IDENTITY.replace(
        "        self.conv = nn.Conv2d(cin, cout, 3, padding=1)\n",
        "        if cin:\n            self.conv = nn.Conv2d(cin, cout, 3, padding=1)\n        else:\n            self.conv = None\n")
    assert before != IDENTITY
    assert_rewrite(before, skipped=[("conv_batchnorm", "S216", "as if the `Conv2d` were always there")])
