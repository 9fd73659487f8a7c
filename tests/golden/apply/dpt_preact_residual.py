"""DPTPreActResidualLayer from transformers 4.35.0 (models/dpt/modeling_dpt.py),
the ADOPTER paper's Fig. 3: a Conv2d before an `if`, the BatchNorm2d inside it.

Self-contained: `ACT2FN["relu"]` is replaced by the `nn.ReLU()` it builds.
"""

import torch
from torch import nn
from torch.ao.nn.intrinsic import ConvBn2d


def _dslc_remap_state_dict(renames):
    """A load_state_dict pre-hook (added by `dslc apply`): load checkpoints saved before the rewrite."""

    def hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for new, old, keep in renames:
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict[prefix + old] if keep else state_dict.pop(prefix + old)

    return hook


class DPTPreActResidualLayer(nn.Module):
    """
    ResidualConvUnit, pre-activate residual unit.

    Args:
        config (`[DPTConfig]`):
            Model configuration class defining the model architecture.
    """

    def __init__(self, config):
        super().__init__()

        self.use_batch_norm = config.use_batch_norm_in_fusion_residual
        self.activation1 = nn.ReLU()
        self.convolution1 = nn.Conv2d(
            config.fusion_hidden_size,
            config.fusion_hidden_size,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=not self.use_batch_norm,
        )

        self.activation2 = nn.ReLU()
        self.convolution2 = nn.Conv2d(
            config.fusion_hidden_size,
            config.fusion_hidden_size,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=not self.use_batch_norm,
        )

        if self.use_batch_norm:
            self.convolution1 = ConvBn2d(nn.Conv2d(
                config.fusion_hidden_size,
                config.fusion_hidden_size,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=not self.use_batch_norm,
            ), nn.BatchNorm2d(config.fusion_hidden_size))
            self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
                ('convolution1.0.weight', 'convolution1.weight', False),
                ('convolution1.0.bias', 'convolution1.bias', False),
                ('convolution1.1.weight', 'batch_norm1.weight', False),
                ('convolution1.1.bias', 'batch_norm1.bias', False),
                ('convolution1.1.running_mean', 'batch_norm1.running_mean', False),
                ('convolution1.1.running_var', 'batch_norm1.running_var', False),
                ('convolution1.1.num_batches_tracked', 'batch_norm1.num_batches_tracked', False),
            )))
            self.convolution2 = ConvBn2d(nn.Conv2d(
                config.fusion_hidden_size,
                config.fusion_hidden_size,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=not self.use_batch_norm,
            ), nn.BatchNorm2d(config.fusion_hidden_size))
            self._register_load_state_dict_pre_hook(_dslc_remap_state_dict((
                ('convolution2.0.weight', 'convolution2.weight', False),
                ('convolution2.0.bias', 'convolution2.bias', False),
                ('convolution2.1.weight', 'batch_norm2.weight', False),
                ('convolution2.1.bias', 'batch_norm2.bias', False),
                ('convolution2.1.running_mean', 'batch_norm2.running_mean', False),
                ('convolution2.1.running_var', 'batch_norm2.running_var', False),
                ('convolution2.1.num_batches_tracked', 'batch_norm2.num_batches_tracked', False),
            )))

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        residual = hidden_state
        hidden_state = self.activation1(hidden_state)

        hidden_state = self.convolution1(hidden_state)

        hidden_state = self.activation2(hidden_state)
        hidden_state = self.convolution2(hidden_state)

        return hidden_state + residual


class Config:
    """The few configuration values the layer reads."""

    fusion_hidden_size = 16
    use_batch_norm_in_fusion_residual = True


if __name__ == "__main__":
    torch.manual_seed(0)
    layer = DPTPreActResidualLayer(Config()).eval()
    x = torch.randn(2, Config.fusion_hidden_size, 8, 8)
    print(layer(x).shape)
