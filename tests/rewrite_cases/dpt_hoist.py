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
            self.conv_bn = ConvBn2d(self.convolution1, self.batch_norm1)
            self.batch_norm2 = nn.BatchNorm2d(config.fusion_hidden_size)
            self.conv_bn_2 = ConvBn2d(self.convolution2, self.batch_norm2)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        residual = hidden_state
        hidden_state = self.activation1(hidden_state)
        if self.use_batch_norm:
            hidden_state = self.conv_bn(hidden_state)
        else:
            hidden_state = self.convolution1(hidden_state)
        hidden_state = self.activation2(hidden_state)
        if self.use_batch_norm:
            hidden_state = self.conv_bn_2(hidden_state)
        else:
            hidden_state = self.convolution2(hidden_state)
        return hidden_state + residual
