"""Observation encoders shared by every agent (STYLE.md principle 4).

Each encoder maps ``[B, *obs_shape]`` to ``[B, out_dim]`` features and exposes ``out_dim``.
Heads (policy/value, dueling, distributional, quantile) live with the agents that use them,
or in :mod:`agents.heads` once two agents share them.

* :class:`MLP` for vector observations (PufferLib Ocean, gymnasium classic control).
* :class:`NatureCNN`: Mnih et al. 2015, the DQN/PPO Atari torso (3 conv + 512 FC).
* :class:`ImpalaCNN`: Espeholt et al. 2018, 3 stages of conv + maxpool + 2 residual blocks,
  with the width multiplier, adaptive max-pooling and spectral-norm options that BTR uses
  (Clark et al. 2024).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def layer_init(layer: nn.Module, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal init, the PPO implementation detail from Engstrom et al. 2020 / CleanRL."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


def _as_float(x: torch.Tensor) -> torch.Tensor:
    # Atari frames arrive as uint8 [0, 255]; scaling happens inside the net so storage stays uint8.
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


class MLP(nn.Module):
    def __init__(self, obs_shape: tuple[int, ...], hidden: int = 128, layers: int = 2):
        super().__init__()
        dims = [math.prod(obs_shape)] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [layer_init(nn.Linear(a, b)), nn.ReLU()]
        self.net = nn.Sequential(nn.Flatten(), *mods)
        self.out_dim = dims[-1]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(_as_float(obs))  # [B, hidden]


class NatureCNN(nn.Module):
    def __init__(self, obs_shape: tuple[int, ...], hidden: int = 512):
        super().__init__()
        c = obs_shape[0]
        self.conv = nn.Sequential(
            layer_init(nn.Conv2d(c, 32, 8, stride=4)), nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),
            nn.Flatten(),
        )  # fmt: skip
        with torch.no_grad():
            n = self.conv(torch.zeros(1, *obs_shape)).shape[1]  # 3136 for 84x84
        self.fc = nn.Sequential(layer_init(nn.Linear(n, hidden)), nn.ReLU())
        self.out_dim = hidden

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(_as_float(obs)))  # [B, hidden]


class _Residual(nn.Module):
    def __init__(self, ch: int, spectral_norm: bool):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        self.c0 = sn(nn.Conv2d(ch, ch, 3, padding=1))
        self.c1 = sn(nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c1(torch.relu(self.c0(torch.relu(x))))


class ImpalaCNN(nn.Module):
    """IMPALA ResNet torso. ``width`` scales the (16, 32, 32) channels (BTR uses 2);
    ``pool`` adaptive-max-pools the last feature map to pool x pool (BTR: 6), 0 disables it;
    ``spectral_norm`` wraps the residual convolutions (BTR)."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        width: int = 1,
        pool: int = 0,
        spectral_norm: bool = False,
        hidden: int = 256,
    ):
        super().__init__()
        c = obs_shape[0]
        stages: list[nn.Module] = []
        for ch in (16 * width, 32 * width, 32 * width):
            stages += [
                nn.Conv2d(c, ch, 3, padding=1),
                nn.MaxPool2d(3, stride=2, padding=1),
                _Residual(ch, spectral_norm),
                _Residual(ch, spectral_norm),
            ]
            c = ch
        if pool:
            stages.append(nn.AdaptiveMaxPool2d((pool, pool)))
        self.conv = nn.Sequential(*stages, nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            n = self.conv(torch.zeros(1, *obs_shape)).shape[1]
        self.fc = nn.Sequential(nn.Linear(n, hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(_as_float(obs)))  # [B, hidden]


class ConvTorso(nn.Module):
    """The convolutional stack of a NatureCNN or ImpalaCNN without its FC layer, for Q-learners
    whose hidden layers belong to the (noisy, dueling) heads: Rainbow's 512-unit streams
    (Hessel et al. 2018) and BTR's (Clark et al. 2024)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.conv = encoder.conv
        self.out_dim = encoder.fc[0].in_features

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.conv(_as_float(obs))  # [B, out_dim]


def flatten_parameters(module: nn.Module) -> nn.Parameter:
    """Move every parameter of ``module`` into one contiguous tensor and every gradient into a
    second one; return the first as a Parameter whose ``.grad`` is the second.

    The module's parameters become views into it, so its forward, ``state_dict`` and
    ``load_state_dict`` work as before, while an optimizer, a gradient clip or a zeroing over the
    returned tensor is one op instead of one per parameter. For the small nets of the off-policy
    agents on CPU, the per-parameter Python overhead of Adam plus clipping cost more than their
    arithmetic. Backward accumulates into the views: zero with ``flat.grad.zero_()``, never with
    ``set_to_none``. Call it once the module is on its final device.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for p in params])  # [P]
    grad = torch.zeros_like(flat)  # [P]
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset : offset + n].view_as(p)
        p.grad = grad[offset : offset + n].view_as(p)
        offset += n
    out = nn.Parameter(flat)  # shares flat's storage
    out.grad = grad
    return out


def clip_grad_norm(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale a flat gradient in place so its L2 norm is at most ``max_norm``; returns the norm
    before clipping. The formula of ``torch.nn.utils.clip_grad_norm_`` (factor
    ``max_norm / (norm + 1e-6)``, capped at 1) without its per-call bookkeeping, which costs
    ~0.2 ms on CPU, more than this on a 100K-parameter gradient."""
    norm = torch.linalg.vector_norm(grad)
    grad.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))
    return norm


def make_encoder(kind: str, obs_shape: tuple[int, ...], hidden: int, **kw) -> nn.Module:
    """``kind`` in {"auto", "mlp", "nature", "impala"}; "auto" picks MLP for vectors, NatureCNN
    for images."""
    if kind == "auto":
        kind = "mlp" if len(obs_shape) == 1 else "nature"
    if kind == "mlp":
        return MLP(obs_shape, hidden, **kw)
    if kind == "nature":
        return NatureCNN(obs_shape, hidden)
    if kind == "impala":
        return ImpalaCNN(obs_shape, hidden=hidden, **kw)
    raise ValueError(f"unknown encoder {kind!r}: choose auto, mlp, nature or impala")
