"""BertSelfOutput, as in the ADOPTER paper's Fig. 1 (the original version).

Dense, Dropout, then LayerNorm over the residual sum: the Dropout + add +
LayerNorm sequence is what the `dropout_layernorm` rule fuses.
"""

import torch
from epoi.ops.torchscript_ops import FusedDropoutAddLayerNorm
from torch import nn


def _dslc_remap_state_dict(renames):
    """A load_state_dict pre-hook (added by `dslc apply`): load checkpoints saved before the rewrite."""

    def hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for new, old, keep in renames:
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict[prefix + old] if keep else state_dict.pop(prefix + old)

    return hook


class BertSelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = FusedDropoutAddLayerNorm(config.hidden_size, config.hidden_dropout_prob, eps=config.layer_norm_eps)
        self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
            ('LayerNorm.layer_norm.weight', 'LayerNorm.weight', False),
            ('LayerNorm.layer_norm.bias', 'LayerNorm.bias', False),
        )))

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.LayerNorm(hidden_states, input_tensor)
        return hidden_states


class Config:
    """The few configuration values the layer reads."""

    hidden_size = 32
    layer_norm_eps = 1e-12
    hidden_dropout_prob = 0.1


if __name__ == "__main__":
    torch.manual_seed(0)
    layer = BertSelfOutput(Config()).eval()
    x = torch.randn(2, 4, Config.hidden_size)
    print(layer(x, x).shape)
