"""Value heads shared by the off-policy agents (Rainbow, BTR): STYLE.md principle 4.

* :class:`NoisyLinear`: factorised Gaussian noisy layer (Fortunato et al. 2018, "Noisy Networks
  for Exploration", sec. 3): ``w = mu_w + sigma_w * (f(eps_out) f(eps_in)^T)`` with
  ``f(x) = sign(x) sqrt(|x|)``, ``mu ~ U(-1/sqrt(in), 1/sqrt(in))``, ``sigma = sigma0/sqrt(in)``.
  Noise is used in ``train()`` mode and switched off (mean weights ``mu``) in ``eval()`` mode;
  new noise is drawn only by :meth:`NoisyLinear.reset_noise` (or :func:`reset_noise` on a whole
  net, or on the flat noise tensor :func:`bind_noise` makes of it), so the caller decides when
  noise changes.
* :class:`QHead`: action-value head ``[*, D] -> [*, A, atoms]`` with optional dueling streams
  (Wang et al. 2016, eq. 9: ``Q = V + A - mean_a A``), optional noisy layers and ``atoms``
  outputs per action (``atoms=1``: a plain Q head; ``atoms=51``: C51 logits, to which dueling is
  applied before the softmax as in Hessel et al. 2018, sec. 3 "Dueling"). Leading dimensions are
  free, so an IQN-style caller can pass ``[B, T, D]`` quantile features and get ``[B, T, A, 1]``.
* :func:`categorical_projection`: the C51 projection of a shifted, scaled return distribution
  back onto the fixed support (Bellemare et al. 2017, Algorithm 1) as a pure tensor function,
  correct for atoms landing exactly on a support point (the ``l == u`` case).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class NoisyLinear(nn.Module):
    """``nn.Linear`` with factorised Gaussian parameter noise (Fortunato et al. 2018)."""

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5):
        super().__init__()
        self.in_features, self.out_features, self.sigma0 = in_features, out_features, sigma0
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        # Noise lives in buffers so it moves with .to(device) and is saved with the state dict.
        self.register_buffer("eps_in", torch.zeros(in_features))
        self.register_buffer("eps_out", torch.zeros(out_features))
        self.reset_parameters()
        self.reset_noise()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)  # Fortunato et al. 2018, sec. 3.2 (factorised)
        nn.init.uniform_(self.weight_mu, -bound, bound)
        nn.init.uniform_(self.bias_mu, -bound, bound)
        nn.init.constant_(self.weight_sigma, self.sigma0 * bound)
        nn.init.constant_(self.bias_sigma, self.sigma0 * bound)

    @staticmethod
    def _f(x: torch.Tensor) -> torch.Tensor:
        return x.sign() * x.abs().sqrt()

    def reset_noise(self) -> None:
        reset_noise([self])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.weight_mu, self.bias_mu)
        w = self.weight_mu + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)  # [out, in]
        b = self.bias_mu + self.bias_sigma * self.eps_out  # [out]
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, sigma0={self.sigma0}"


def noisy_layers(module: nn.Module) -> list[NoisyLinear]:
    """The :class:`NoisyLinear` layers inside ``module`` (cache it: walking modules costs time)."""
    return [m for m in module.modules() if isinstance(m, NoisyLinear)]


@torch.no_grad()
def bind_noise(module: nn.Module) -> torch.Tensor:
    """Re-home the noise buffers of every :class:`NoisyLinear` in ``module`` in one flat tensor
    and return it (``[sum of in + out features]``, layer by layer, ``eps_in`` before ``eps_out``).
    :func:`reset_noise` on that tensor redraws all of the net's noise with a few in-place ops:
    acting and learning redraw every step, and per-layer calls cost more than the draws."""
    layers = noisy_layers(module)
    sizes = [n for m in layers for n in (m.in_features, m.out_features)]
    device = layers[0].weight_mu.device if layers else None
    flat = torch.zeros(sum(sizes), device=device)
    parts = flat.split(sizes)
    for i, m in enumerate(layers):
        parts[2 * i].copy_(m.eps_in)
        parts[2 * i + 1].copy_(m.eps_out)
        m.eps_in, m.eps_out = parts[2 * i], parts[2 * i + 1]
    return flat


@torch.no_grad()
def reset_noise(noise: nn.Module | list[NoisyLinear] | torch.Tensor) -> None:
    """Draw fresh factorised noise ``f(eps)``, ``eps ~ N(0, 1)``: in place into a flat tensor from
    :func:`bind_noise`, or into every :class:`NoisyLinear` of a net or a cached layer list. Either
    way it is one Gaussian draw in layer order, so both give the same noise for the same RNG state.
    """
    if isinstance(noise, torch.Tensor):
        sign = noise.normal_().sign()
        noise.abs_().sqrt_().mul_(sign)  # f(x) = sign(x) sqrt(|x|), in place
        return
    layers = noise if isinstance(noise, list) else noisy_layers(noise)
    if not layers:
        return
    sizes = [n for m in layers for n in (m.in_features, m.out_features)]
    eps = NoisyLinear._f(torch.randn(sum(sizes), device=layers[0].weight_mu.device))
    parts = eps.split(sizes)
    for i, m in enumerate(layers):
        m.eps_in.copy_(parts[2 * i])
        m.eps_out.copy_(parts[2 * i + 1])


def make_linear(in_features: int, out_features: int, noisy: bool, sigma0: float = 0.5) -> nn.Module:
    """A :class:`NoisyLinear` if ``noisy`` else an ``nn.Linear`` with PyTorch's default init."""
    return NoisyLinear(in_features, out_features, sigma0) if noisy else nn.Linear(in_features, out_features)


def dueling_combine(value: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """Wang et al. 2016, eq. 9: ``Q = V + A - mean_a A``. ``value`` [*, 1, K], ``advantage``
    [*, A, K] -> [*, A, K]. The mean (not max) makes the split identifiable and stable."""
    return value + advantage - advantage.mean(dim=-2, keepdim=True)


class QHead(nn.Module):
    """Features ``[*, in_dim]`` -> ``[*, num_actions, atoms]`` (Q-values or C51 logits).

    ``hidden > 0`` gives each stream one hidden layer of that width with ReLU (Rainbow's
    ``512``-unit streams, Hessel et al. 2018); ``hidden == 0`` makes each stream a single layer.
    ``dueling=False`` keeps only the advantage stream as the output (a plain DQN head). Every
    linear layer is noisy when ``noisy`` is set (Hessel et al. 2018 replace all fully connected
    layers of the streams).
    """

    def __init__(
        self,
        in_dim: int,
        num_actions: int,
        atoms: int = 1,
        hidden: int = 0,
        dueling: bool = True,
        noisy: bool = True,
        sigma0: float = 0.5,
    ):
        super().__init__()
        self.num_actions, self.atoms, self.dueling = num_actions, atoms, dueling

        def stream(out: int) -> nn.Module:
            if hidden <= 0:
                return make_linear(in_dim, out, noisy, sigma0)
            return nn.Sequential(
                make_linear(in_dim, hidden, noisy, sigma0), nn.ReLU(), make_linear(hidden, out, noisy, sigma0)
            )

        self.advantage = stream(num_actions * atoms)
        self.value = stream(atoms) if dueling else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        adv = self.advantage(x).view(*lead, self.num_actions, self.atoms)  # [*, A, K]
        if self.value is None:
            return adv
        value = self.value(x).view(*lead, 1, self.atoms)  # [*, 1, K]
        return dueling_combine(value, adv)  # [*, A, K]


def categorical_projection(
    next_probs: torch.Tensor, returns: torch.Tensor, discounts: torch.Tensor, support: torch.Tensor
) -> torch.Tensor:
    """Project the distribution of ``returns + discounts * Z'`` onto ``support`` (C51).

    Bellemare et al. 2017, Algorithm 1. ``next_probs`` [B, K]: probabilities of ``Z'`` on
    ``support`` [K] (evenly spaced, ascending); ``returns`` [B] (n-step discounted reward sums);
    ``discounts`` [B] (``gamma**n`` when bootstrapping, ``0`` for terminal transitions, which
    puts all the mass on ``returns``). Shifted atoms ``Tz_j`` outside ``[v_min, v_max]`` are
    clipped to the nearest end; each then splits its mass ``p_j`` linearly between its two
    neighbouring support points (``p_j * max(0, 1 - |Tz_j - z_i| / dz)`` to point ``i``).

    Two ``scatter_add`` calls on [B, K] tensors: the lower neighbour is ``l = floor(b)`` and the
    upper ``l + 1`` with the fractional part as its share, so an atom landing exactly on a support
    point (``l == u`` in Algorithm 1, where a naive implementation drops its mass) gives it all to
    ``l``. Returns [B, K]; each row sums to the row sum of ``next_probs``.
    """
    k = support.shape[0]
    v_min, v_max = support[0], support[-1]
    dz = (v_max - v_min) / (k - 1)
    tz = (returns.unsqueeze(-1) + discounts.unsqueeze(-1) * support).clamp(v_min, v_max)  # [B, K]
    b = (tz - v_min) / dz  # [B, K] fractional support index in [0, K-1]
    low = b.floor().clamp(max=k - 1)  # [B, K]
    frac = b - low  # [B, K] share of the upper neighbour, 0 when b is a support point
    low_i = low.long()
    up_i = (low_i + 1).clamp(max=k - 1)  # at b == K-1, frac == 0: nothing goes "above" the top
    m = torch.zeros_like(next_probs)
    m.scatter_add_(-1, low_i, next_probs * (1.0 - frac))
    m.scatter_add_(-1, up_i, next_probs * frac)
    return m  # [B, K]
