import torch
from torch import nn


class BertSelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        return hidden_states
# output
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
        self.dropout_add_layernorm = FusedDropoutAddLayerNorm(config.hidden_size, config.hidden_dropout_prob, eps=config.layer_norm_eps)
        self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
            ('dropout_add_layernorm.weight', 'LayerNorm.weight', False),
            ('dropout_add_layernorm.bias', 'LayerNorm.bias', False),
        )))

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout_add_layernorm(hidden_states, input_tensor)
        return hidden_states
