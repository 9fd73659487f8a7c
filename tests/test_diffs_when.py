"""Diffs a reviewer accepts: a `when` rewrite duplicates only the init
statements it changes when the unchanged ones between them can provably go
first (parameter-free torch.nn layers that read no `self`, and nothing the
changed statements mention); otherwise the whole run is duplicated as before."""

from __future__ import annotations

import pytest

from rewrite_support import run, stable

SOURCE = '''import torch
from torch import nn
from transformers.activations import ACT2FN


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
{between}        self.act = ACT2FN[config.hidden_act]

    def forward(self, hidden_states):
        hidden_states = self.act(self.fc1(hidden_states))
        return self.drop(hidden_states)
'''

COND = '        if config.hidden_act in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_accurate"):\n'
NEW_FC1 = "self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)\n"
NEW_ACT = "self.act = FusedBiasGELU(config.intermediate_size, prev_weight=self.fc1.weight)\n"
OLD_FC1 = "self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)\n"
OLD_ACT = "self.act = ACT2FN[config.hidden_act]\n"


def init_body(new: str) -> str:
    return new[new.index("        super().__init__()\n") + len("        super().__init__()\n"):new.index("    def forward")]


def rewrite(between: str) -> str:
    source = SOURCE.format(between=between)
    result = run(source)
    assert [(m.rule, m.status) for m in result.matches] == [("adopter:biased_gelu", "applied")], result.matches
    new = result.new_source
    stable(new)
    assert new.endswith(source[source.index("    def forward"):])
    return new


def test_unrelated_init_line_is_not_duplicated():
    line = "        self.drop = nn.Dropout(config.hidden_dropout_prob)\n"
    new = rewrite(line)
    hook = ("            self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((\n"
            "                ('act.bias', 'fc1.bias', False),\n"
            "            )))\n")
    assert init_body(new) == (line + COND + "            " + NEW_FC1 + "            " + NEW_ACT + hook
                              + "        else:\n" + "            " + OLD_FC1 + "            " + OLD_ACT + "\n")


def test_several_unrelated_lines_keep_their_order():
    lines = "        self.drop = nn.Dropout(p=0.1)\n        self.pool = torch.nn.AdaptiveAvgPool1d(1)\n"
    new = rewrite(lines)
    body = init_body(new)
    assert body.startswith(lines + COND) and body.count("self.drop =") == 1 and body.count("self.pool =") == 1


@pytest.mark.parametrize("between", [
    # a layer with parameters: moving fc1 below it changes the random initial
    # values under a seed and the order of parameters()
    "        self.drop = nn.Linear(config.hidden_size, 2)\n",
    # reads `self`
    "        self.drop = nn.Dropout(self.rate)\n",
    # a nested call in its arguments
    "        self.drop = nn.Dropout(float(config.hidden_dropout_prob))\n",
    # not a torch.nn layer the emitter knows
    "        self.drop = Dropout(0.1)\n",
    # a comment between the statements
    "        # regularisation\n        self.drop = nn.Dropout(0.1)\n",
])
def test_refuses_to_reorder_and_duplicates_the_run(between):
    new = rewrite(between)
    body = init_body(new)
    assert body.startswith(COND)
    # Today's shape: the whole run, unrelated lines included, in both branches.
    assert body.count(between.strip().splitlines()[-1]) == 2
    assert body.index("            " + NEW_FC1) < body.index(between.strip().splitlines()[-1]) < body.index("            " + NEW_ACT)


def test_changed_statement_reading_what_the_unrelated_one_writes_is_not_moved():
    # fc1 reads `self.drop`, which the line between them assigns again: moving
    # fc1 below it would change the value fc1 reads.
    line = "        self.drop = nn.Dropout(0.2)\n"
    source = SOURCE.format(between=line).replace(
        "        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)\n",
        "        self.drop = nn.Dropout(0.1)\n        self.fc1 = nn.Linear(config.hidden_size, int(self.drop.p * 100))\n")
    result = run(source)
    assert [m.status for m in result.matches] == ["applied"], result.matches
    new = result.new_source
    stable(new)
    body = init_body(new)
    assert body.startswith("        self.drop = nn.Dropout(0.1)\n" + COND) and body.count(line.strip()) == 2
