"""Score networks (equinox): residual MLP for low-dimensional data, DDPM++ U-Net for images."""

from training.networks.ddpmpp import DDPMpp, count_params
from training.networks.mlp import FlatMLPScoreNet, MLPScoreNet

__all__ = ["MLPScoreNet", "FlatMLPScoreNet", "DDPMpp", "count_params"]
