"""Return estimators as pure tensor functions, shared by agents (STYLE.md principle 4).

Every function takes time-major ``[T, N]`` tensors (T steps of N parallel environments), returns
new tensors, and holds no state, so tests can check them by hand and ``torch.compile`` can wrap
them. Conventions, for step ``t`` (the agent acted on ``s_t`` and received ``r_t``):

* ``rewards[t]``: ``r_t``;
* ``values[t]``: ``V(s_t)``;
* ``next_values[t]``: ``V`` of the true next observation: ``V(s_{t+1})`` inside an episode, the
  value of ``final_obs`` where the step was truncated, anything (it is masked) where it was
  terminated, and the bootstrap value ``V(s_T)`` at ``t = T-1``;
* ``terminated[t]``: the episode ended in a true terminal state: no bootstrap;
* ``truncated[t]``: the episode was cut (time limit): bootstrap from ``next_values[t]`` but let
  no credit flow across the cut.

Keeping ``next_values`` an explicit input (rather than shifting ``values``) is what makes
truncation exact: the cut step bootstraps from ``V(final_obs)`` while the next row of ``values``
already belongs to the new episode.
"""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
    rho: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalised advantage estimates ``[T, N]`` (Schulman et al. 2016, arXiv:1506.02438).

    ``delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t`` and
    ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}`` with ``done = terminated | truncated``.

    ``rho`` and ``c`` (``[T, N]``, already clipped: ``min(pi/mu, rho_bar)``, ``min(pi/mu, c_bar)``)
    turn this into V-trace with a lambda (Espeholt et al. 2018, arXiv:1802.01561, eq. 1, in the
    recursive form PufferLib 3.0's ``compute_puff_advantage`` uses):
    ``A_t = rho_t * delta_t + gamma * lam * c_t * (1 - done_t) * A_{t+1}``; then
    ``A_t + values_t`` is the V-trace value target. ``rho = c = 1`` gives plain GAE.
    """
    not_term = 1.0 - terminated.float()  # [T, N]
    not_done = 1.0 - (terminated | truncated).float()  # [T, N]
    deltas = rewards + gamma * not_term * next_values - values  # [T, N]
    decay = gamma * lam * not_done  # [T, N]
    if rho is not None:
        deltas = rho * deltas
    if c is not None:
        decay = decay * c
    adv = torch.empty_like(deltas)  # [T, N]
    last = torch.zeros_like(deltas[0])  # [N]
    for t in range(deltas.shape[0] - 1, -1, -1):
        last = deltas[t] + decay[t] * last
        adv[t] = last
    return adv


def vtrace(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
    rho: torch.Tensor,
    c: torch.Tensor,
    form: str = "impala",
) -> tuple[torch.Tensor, torch.Tensor]:
    """V-trace (Espeholt et al. 2018, arXiv:1802.01561): (policy-gradient advantages ``[T, N]``,
    value targets ``v [T, N]``), with ``rho``, ``c`` the clipped importance weights as in :func:`gae`.

    The value targets are eq. 1 in the paper's variant with lambda (``c_t = lam min(c_bar, pi/mu)``):
    ``v_t - V_t = rho_t delta_t + gamma lam c_t (1 - done_t) (v_{t+1} - V_{t+1})``, i.e.
    ``values + gae(..., rho, c)``. Two policy-gradient advantages:

    * ``form="impala"`` (section 4.2): ``rho_t (r_t + gamma q_{t+1} - V_t)``, the next state's
      estimate ``q_{t+1} = (1 - lam) V_{t+1} + lam v_{t+1}``: with lambda this is rlax's
      ``vtrace_td_error_and_advantage`` (the paper writes it for lam = 1, where ``q = v``). Written
      as a recursion it is ``rho_t (delta_t + gamma lam (1 - done_t) (v_{t+1} - V_{t+1}))``: the
      continuation is weighted by ``rho_t``, the weight of the action taken at t. With
      ``rho = c = 1`` it is exactly GAE.
    * ``form="puffer"``: ``v_t - V_t`` itself, PufferLib 3.0's ``compute_puff_advantage``: the
      continuation is weighted by ``c_t`` instead, so with ``c_bar > 1`` a trace can grow by up
      to ``c_bar`` per step. The two forms agree where ``rho = c``.

    ``next_values`` at the segment end is the bootstrap ``V(s_T)`` and ``v_T = V(s_T)`` (no data
    beyond it); where a step ended its episode no credit crosses, as in :func:`gae`.
    """
    corr = gae(rewards, values, next_values, terminated, truncated, gamma, lam, rho, c)  # [T, N] v - V
    if form == "puffer":
        return corr, corr + values
    if form != "impala":
        raise ValueError(f"V-trace form {form!r}: choose impala or puffer")
    not_term = 1.0 - terminated.float()  # [T, N]
    not_done = 1.0 - (terminated | truncated).float()  # [T, N]
    deltas = rewards + gamma * not_term * next_values - values  # [T, N]
    nxt = torch.zeros_like(corr)  # [T, N] v_{t+1} - V_{t+1}; 0 past the segment end
    nxt[:-1] = corr[1:]
    return rho * (deltas + gamma * lam * not_done * nxt), corr + values


def q_lambda(
    rewards: torch.Tensor,
    next_q: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Peng's Q(lambda) returns ``[T, N]`` as PQN computes them (Gallici et al. 2024,
    arXiv:2407.04811; purejaxql ``pqn_atari.py`` ``_get_target``, CleanRL ``pqn.py``).

    ``next_q[t]`` is ``max_a Q`` of the true next observation, like ``next_values`` above:
    ``max_a Q(s_{t+1}, a)`` inside an episode, of ``final_obs`` where step t was truncated, of
    ``s_T`` at ``t = T-1``; masked where terminated. Backwards from the segment end::

        G_t = r_t + gamma * (1 - terminated_t) * ((1 - lam) * next_q_t + lam * G'_{t+1})

    with ``G'_{t+1} = G_{t+1}`` while the episode continues into row t+1 and ``next_q_t`` where
    step t ended it or the segment ends there (no return of a later episode or beyond the data is
    mixed in). ``lam = 0`` gives one-step targets ``r_t + gamma max_a Q(s', a)``; ``lam = 1`` the
    discounted return to the episode or segment end, bootstrapped there. The references treat a
    truncation as a termination; here it bootstraps from ``final_obs`` (Pardo et al. 2018).
    """
    not_term = 1.0 - terminated.float()  # [T, N]
    done = terminated | truncated  # [T, N]
    out = torch.empty_like(rewards)  # [T, N]
    ret = next_q[-1]  # [N] so that G'_T = next_q_{T-1}: the segment end bootstraps fully
    for t in range(rewards.shape[0] - 1, -1, -1):
        cont = torch.where(done[t], next_q[t], ret)  # [N] G'_{t+1}
        ret = rewards[t] + gamma * not_term[t] * ((1.0 - lam) * next_q[t] + lam * cont)
        out[t] = ret
    return out
