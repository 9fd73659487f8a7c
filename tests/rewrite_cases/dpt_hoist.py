import torch
import torch.nn as nn


class DPTPreActResidualLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.use_batch_norm = config.use_batch_norm_in_fusion_residual
        self.activation1 = nn.ReLU()
        self.convolution1 = nn.Conv2d(config.fusion_hidden_size, config.fusion_hidden_size, kernel_size=3)
        self.activation2 = nn.ReLU()
        self.convolution2 = nn.Conv2d(config.fusion_hidden_size, config.fusion_hidden_size, kernel_size=3)
        if self.use_batch_norm:
            self.batch_norm1 = nn.BatchNorm2d(config.fusion_hidden_size)
            self.batch_norm2 = nn.BatchNorm2d(config.fusion_hidden_size)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        residual = hidden_state
        hidden_state = self.activation1(hidden_state)
        hidden_state = self.convolution1(hidden_state)
        if self.use_batch_norm:
            hidden_state = self.batch_norm1(hidden_state)
        hidden_state = self.activation2(hidden_state)
        hidden_state = self.convolution2(hidden_state)
        if self.use_batch_norm:
            hidden_state = self.batch_norm2(hidden_state)
        return hidden_state + residual
# output
import torch
import torch.nn as nn
from torch.ao.nn.intrinsic import ConvBn2d


def _dslc_remap_state_dict(renames):
    """A load_state_dict pre-hook (added by `dslc apply`): load checkpoints saved before the rewrite."""

    def hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for new, old, keep in renames:
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict[prefix + old] if keep else state_dict.pop(prefix + old)

    return hook


class DPTPreActResidualLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.use_batch_norm = config.use_batch_norm_in_fusion_residual
        self.activation1 = nn.ReLU()
        self.convolution1 = nn.Conv2d(config.fusion_hidden_size, config.fusion_hidden_size, kernel_size=3)
        self.activation2 = nn.ReLU()
        self.convolution2 = nn.Conv2d(config.fusion_hidden_size, config.fusion_hidden_size, kernel_size=3)
        if self.use_batch_norm:
            self.convolution1 = ConvBn2d(nn.Conv2d(config.fusion_hidden_size, config.fusion_hidden_size, kernel_size=3), nn.BatchNorm2d(config.fusion_hidden_size))
            self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
                ('convolution1.0.weight', 'convolution1.weight', False),
                ('convolution1.1.weight', 'batch_norm1.weight', False),
            )))
            self.convolution2 = ConvBn2d(nn.Conv2d(config.fusion_hidden_size, config.fusion_hidden_size, kernel_size=3), nn.BatchNorm2d(config.fusion_hidden_size))
            self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
                ('convolution2.0.weight', 'convolution2.weight', False),
                ('convolution2.1.weight', 'batch_norm2.weight', False),
            )))

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        residual = hidden_state
        hidden_state = self.activation1(hidden_state)
        hidden_state = self.convolution1(hidden_state)
        hidden_state = self.activation2(hidden_state)
        hidden_state = self.convolution2(hidden_state)
        return hidden_state + residual
