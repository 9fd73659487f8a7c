"""DPTPreActResidualLayer from transformers 4.35.0 (models/dpt/modeling_dpt.py),
the ADOPTER paper's Fig. 3: a Conv2d before an `if`, the BatchNorm2d inside it.

Self-contained: `ACT2FN["relu"]` is replaced by the `nn.ReLU()` it builds.
"""

import torch
from torch import nn


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


class Config:
    """The few configuration values the layer reads."""

    fusion_hidden_size = 16
    use_batch_norm_in_fusion_residual = True


if __name__ == "__main__":
    torch.manual_seed(0)
    layer = DPTPreActResidualLayer(Config()).eval()
    x = torch.randn(2, Config.fusion_hidden_size, 8, 8)
    print(layer(x).shape)
