"""`rewrite_support.assert_rewrite` itself: it passes on the right expectation
and fails on each kind of wrong one (output, skipped, warnings, applied)."""

from __future__ import annotations

import pytest

from rewrite_support import BERT_EXAMPLE, assert_rewrite, fixture, self_output

SOFTMAX = """
    import torch.nn.functional as F


    def attend(scores):
        return F.softmax(scores, dim=-1)
    """
SOFTMAX_AFTER = """
    import torch.nn.functional as F
    from xformers.triton.softmax import softmax


    def attend(scores):
        return softmax(scores)
    """

IFS = "".join(f"        if self.c{i}:\n            x = self.act(x) * {i + 2}\n" for i in range(9))  # 512 paths
CAPPED = f"""\
import torch.nn.functional as F
from torch import nn


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()

    def forward(self, x):
{IFS}        return F.softmax(x, dim=-1)
"""
PATHS = ("W101", "more than 256 paths; kept the first 256")


def test_fixture_dedents_and_drops_the_first_newline():
    assert fixture("""
        a = 1
          b = 2
        """) == "a = 1\n  b = 2\n"
    assert fixture("a = 1\n") == "a = 1\n"


def test_right_expectations_pass():
    result = assert_rewrite(SOFTMAX, SOFTMAX_AFTER, applied=["softmax"])
    assert [m.status for m in result.matches] == ["applied"]
    assert_rewrite(self_output(tail="out, dropped"), None, skipped=[("adopter:dropout_layernorm", "S204")])
    after = CAPPED.replace("F.softmax(x, dim=-1)", "softmax(x)").replace(
        "from torch import nn\n", "from torch import nn\nfrom xformers.triton.softmax import softmax\n")
    assert_rewrite(CAPPED, after, warnings=[PATHS])


@pytest.mark.parametrize("wrong", [
    dict(after=SOFTMAX_AFTER.replace("softmax(scores)\n", "softmax(scores)  \n")),  # one byte off
    dict(after=None),  # it does change
    dict(after=SOFTMAX_AFTER, applied=["softmax", "softmax"]),
    dict(after=SOFTMAX_AFTER, skipped=[("softmax", "S204")]),
    dict(after=SOFTMAX_AFTER, warnings=["W101"]),
])
def test_wrong_expectations_fail(wrong):
    with pytest.raises(AssertionError):
        assert_rewrite(SOFTMAX, **wrong)


def test_skipped_and_warnings_are_compared_exactly():
    with pytest.raises(AssertionError):  # the skip is not expected
        assert_rewrite(self_output(tail="out, dropped"), None)
    with pytest.raises(AssertionError):  # right code, wrong reason
        assert_rewrite(self_output(tail="out, dropped"), None, skipped=[("dropout_layernorm", "S204", "line 99")])
    with pytest.raises(AssertionError):  # the warning is not expected
        assert_rewrite(CAPPED, CAPPED)


def test_the_shared_model_is_the_papers():
    """`self_output()` is examples/bert_self_output.py's class without its annotations."""
    start = BERT_EXAMPLE.index("class BertSelfOutput")
    example = BERT_EXAMPLE[start:BERT_EXAMPLE.index("\n\n\nclass Config")]
    example = example.replace(": torch.Tensor", "").replace(" -> torch.Tensor", "")
    assert self_output("BertSelfOutput").endswith(example + "\n")
