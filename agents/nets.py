"""Observation encoders shared by every agent (STYLE.md principle 4).

Each encoder maps ``[B, *obs_shape]`` to ``[B, out_dim]`` features and exposes ``out_dim``.
Heads (policy/value, dueling, distributional, quantile) live with the agents that use them,
or in :mod:`agents.heads` once two agents share them.

* :class:`MLP` for vector observations (PufferLib Ocean, gymnasium classic control).
* :class:`NatureCNN`: Mnih et al. 2015, the DQN/PPO Atari torso (3 conv + 512 FC).
* :class:`ImpalaCNN`: Espeholt et al. 2018, 3 stages of conv + maxpool + 2 residual blocks,
  with the width multiplier, adaptive max-pooling and spectral-norm options that BTR uses
  (Clark et al. 2024).
* Small images (height and width at most ``SMALL_IMAGE`` = 16: MinAtar's 10x10 boards), where
  NatureCNN's 8x8/4 and 4x4/2 convolutions do not fit and ImpalaCNN's three halvings leave 2x2:
  :class:`MinAtarCNN`, the MinAtar paper's network (one 3x3 conv + 128 FC), which ``auto`` picks;
  :class:`SmallImpalaCNN`, the Impala torso sized for them, which ``impala`` builds there.
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
    """``layers`` x (Linear, ReLU); ``layer_norm`` puts a LayerNorm before each ReLU (PQN,
    Gallici et al. 2024; CleanRL ``pqn.py``)."""

    def __init__(
        self, obs_shape: tuple[int, ...], hidden: int = 128, layers: int = 2, layer_norm: bool = False
    ):
        super().__init__()
        dims = [math.prod(obs_shape)] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [layer_init(nn.Linear(a, b)), *([nn.LayerNorm(b)] if layer_norm else []), nn.ReLU()]
        self.net = nn.Sequential(nn.Flatten(), *mods)
        self.out_dim = dims[-1]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(_as_float(obs))  # [B, hidden]


class NatureCNN(nn.Module):
    """``layer_norm`` puts a LayerNorm before every ReLU, over each conv's whole [C, H, W] output
    (PQN as CleanRL ``pqn_atari_envpool.py``; purejaxql's flax LayerNorm normalises the channels
    of each position instead); off, the layers and their state_dict keys are DQN's."""

    def __init__(self, obs_shape: tuple[int, ...], hidden: int = 512, layer_norm: bool = False):
        super().__init__()
        c, x, mods = obs_shape[0], torch.zeros(1, *obs_shape), []
        for out, k, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            conv = layer_init(nn.Conv2d(c, out, k, stride=stride))
            mods.append(conv)
            if layer_norm:
                with torch.no_grad():
                    x = conv(x)
                mods.append(nn.LayerNorm(tuple(x.shape[1:])))  # e.g. [32, 20, 20] for 84x84
            mods.append(nn.ReLU())
            c = out
        self.conv = nn.Sequential(*mods, nn.Flatten())
        with torch.no_grad():
            n = self.conv(torch.zeros(1, *obs_shape)).shape[1]  # 3136 for 84x84
        ln = [nn.LayerNorm(hidden)] if layer_norm else []
        self.fc = nn.Sequential(layer_init(nn.Linear(n, hidden)), *ln, nn.ReLU())
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


def _impala_stages(c: int, stages: list[tuple[int, bool]], spectral_norm: bool) -> list[nn.Module]:
    """IMPALA stages (Espeholt et al. 2018): per (channels, halve) a 3x3 conv, a stride-2 3x3
    max-pool when ``halve``, then two residual blocks."""
    out: list[nn.Module] = []
    for ch, halve in stages:
        out += [nn.Conv2d(c, ch, 3, padding=1), *([nn.MaxPool2d(3, stride=2, padding=1)] if halve else []),
                _Residual(ch, spectral_norm), _Residual(ch, spectral_norm)]  # fmt: skip
        c = ch
    return out


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
        stages = _impala_stages(obs_shape[0], [(16 * width, True), (32 * width, True), (32 * width, True)],
                                spectral_norm)  # fmt: skip
        if pool:
            stages.append(nn.AdaptiveMaxPool2d((pool, pool)))
        self.conv = nn.Sequential(*stages, nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            n = self.conv(torch.zeros(1, *obs_shape)).shape[1]
        self.fc = nn.Sequential(nn.Linear(n, hidden), nn.ReLU())
        self.out_dim = hidden

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(_as_float(obs)))  # [B, hidden]


SMALL_IMAGE = 16  # images with H, W <= this get the small-image torsos (MinAtar: 10x10)


def is_small_image(obs_shape: tuple[int, ...]) -> bool:
    return len(obs_shape) == 3 and max(obs_shape[1:]) <= SMALL_IMAGE


class MinAtarCNN(nn.Module):
    """MinAtar's reference network (Young & Tian 2019, the DQN of ``examples/dqn.py``): one 3x3
    convolution with 16 channels, stride 1, no padding, ReLU, then a fully connected layer of
    ``hidden`` units (the paper's 128), ReLU. Orthogonal init as the other encoders here (the
    reference keeps PyTorch's default). ``layer_norm`` as :class:`NatureCNN`'s (PQN)."""

    def __init__(self, obs_shape: tuple[int, ...], hidden: int = 128, layer_norm: bool = False):
        super().__init__()
        c, h, w = obs_shape
        n = 16 * (h - 2) * (w - 2)  # 1024 for 10x10
        ln = [nn.LayerNorm((16, h - 2, w - 2))] if layer_norm else []
        self.conv = nn.Sequential(
            layer_init(nn.Conv2d(c, 16, 3, stride=1)),  # [B, 16, H-2, W-2]
            *ln, nn.ReLU(),
            nn.Flatten(),  # [B, 16 (H-2) (W-2)]
        )  # fmt: skip
        ln = [nn.LayerNorm(hidden)] if layer_norm else []
        self.fc = nn.Sequential(layer_init(nn.Linear(n, hidden)), *ln, nn.ReLU())  # [B, hidden]
        self.out_dim = hidden

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(_as_float(obs)))  # [B, hidden]


class SmallImpalaCNN(nn.Module):
    """The IMPALA ResNet torso sized for small images (MinAtar's 10x10). Atari's three stages each
    halve the image (84 -> 42 -> 21 -> 11), which leaves a 10x10 board at 2x2; here two stages of
    :class:`ImpalaCNN`'s conv + 2 residual blocks, of (16, 32) x ``width`` channels, only the second
    halving the board (max-pool 3/2 after its conv): 10x10 -> 10x10 -> 5x5. ``pool`` adaptive-max-pools
    that map to pool x pool (must be smaller than it), 0 disables it; ``spectral_norm`` wraps the
    residual convolutions. Feature size ``32 w s^2``, ``s`` 5 or ``pool``: 800 (w 1), 288 (w 1, pool 3)."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        width: int = 1,
        pool: int = 0,
        spectral_norm: bool = False,
        hidden: int = 256,
    ):
        super().__init__()
        c, h, w = obs_shape
        c1, c2 = 16 * width, 32 * width
        side = ((h + 1) // 2, (w + 1) // 2)  # after the stride-2 max-pool: 5x5 for 10x10
        if pool and pool >= min(side):
            raise ValueError(f"Impala max-pool to {pool}x{pool} does not shrink the {side[0]}x{side[1]} feature "
                             f"map of a {h}x{w} image: use a pool size below {min(side)}, or no max-pool")  # fmt: skip
        # [B, c, H, W] -> [B, c1, H, W] (no halving) -> [B, c2, H/2, W/2] (rounded up)
        stages = _impala_stages(c, [(c1, False), (c2, True)], spectral_norm)
        if pool:
            stages.append(nn.AdaptiveMaxPool2d((pool, pool)))  # [B, c2, pool, pool]
        self.conv = nn.Sequential(*stages, nn.ReLU(), nn.Flatten())  # [B, c2 * s * s]
        n = c2 * (pool * pool if pool else side[0] * side[1])
        self.fc = nn.Sequential(nn.Linear(n, hidden), nn.ReLU())  # [B, hidden]
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


class RunningNorm(nn.Module):
    """Observation normalisation ``clip((x - mean) / sqrt(var + 1e-8), -10, 10)`` with running
    statistics (Chan et al.'s parallel update, as SB3 / CleanRL's ``NormalizeObservation``).
    The statistics are buffers, so they travel with the network's state_dict. Used by PPO and
    PQN (``--norm-obs``)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.tensor(1e-4))
        self.register_buffer("scale", torch.ones(shape))  # 1 / sqrt(var + 1e-8), kept for act's speed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mean) * self.scale).clamp(-10.0, 10.0)  # float(): MinAtar's bool boards

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the statistics of a batch ``x [B, *shape]``."""
        x = x.float()
        n, mean = x.shape[0], x.mean(0)
        var = (x - mean).square().mean(0)  # two passes: faster than x.var(0) on CPU, as stable
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + var * n + delta**2 * self.count * n / total) / total)
        self.count.copy_(total)
        self.scale.copy_(torch.rsqrt(self.var + 1e-8))


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


ENCODERS = ("auto", "mlp", "nature", "impala", "minatar")
NATURE_MIN_SIDE = 36  # smallest image NatureCNN's 8x8/4, 4x4/2, 3x3/1 convolutions fit


def encoder_kind(kind: str, obs_shape: tuple[int, ...]) -> str:
    """The encoder ``kind`` builds for ``obs_shape``: "auto" resolved (MLP for anything but a
    [C, H, W] image, :class:`MinAtarCNN` for small images, NatureCNN for larger ones); a
    ValueError with the reason where the chosen torso cannot take the observation."""
    image = len(obs_shape) == 3
    if kind == "auto":
        return "minatar" if is_small_image(obs_shape) else "nature" if image else "mlp"
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoder {kind!r}: choose {', '.join(ENCODERS)}")
    if kind != "mlp" and not image:
        raise ValueError(f"encoder {kind!r} needs [C, H, W] image observations, not shape {tuple(obs_shape)}: "
                         "use mlp (or auto)")  # fmt: skip
    if kind == "nature" and min(obs_shape[1:]) < NATURE_MIN_SIDE:
        raise ValueError(f"encoder 'nature' needs images of at least {NATURE_MIN_SIDE}x{NATURE_MIN_SIDE}, not "
                         f"{obs_shape[1]}x{obs_shape[2]}: use minatar or impala (or auto)")  # fmt: skip
    return kind


def make_encoder(kind: str, obs_shape: tuple[int, ...], hidden: int, **kw) -> nn.Module:
    """``kind`` in ``ENCODERS``, resolved by :func:`encoder_kind`; "impala" is
    :class:`SmallImpalaCNN` on small images."""
    kind = encoder_kind(kind, obs_shape)
    if kind == "mlp":
        return MLP(obs_shape, hidden, **kw)
    if kind == "nature":
        return NatureCNN(obs_shape, hidden, **kw)
    if kind == "minatar":
        return MinAtarCNN(obs_shape, hidden, **kw)
    impala = SmallImpalaCNN if is_small_image(obs_shape) else ImpalaCNN
    return impala(obs_shape, hidden=hidden, **kw)
