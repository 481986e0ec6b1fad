"""PufferLib 3.0's own trainer (``pufferlib/pufferl.py``, ``PuffeRL``) on ``puffer_breakout`` on
the CPU for a given wall clock: prints its steady env_steps/s and its policy's parameter count, the
reference for ``bench perf --agent ppo --game puffer_breakout`` (issue 18).

    .venv/bin/python scripts/pufferlib_trainer_sps.py --seconds 30
    .venv/bin/python scripts/pufferlib_trainer_sps.py --seconds 30 --no-rnn
    .venv/bin/python scripts/pufferlib_trainer_sps.py --seconds 30 --train.minibatch-size 8192

Its config is PufferLib's (``config/default.ini`` under ``config/ocean/breakout.ini``: 1024
envs x bptt_horizon 64 = 65,536 steps per epoch, minibatches of 32,768, update_epochs 1, its
Default policy (Linear 118 -> 128, GELU) under its 128-unit LSTMWrapper), except:

* ``train.device cpu`` and ``train.optimizer adam`` (its default Muon needs ``heavyball``, and
  Adam is what ``bench``'s PPO uses);
* ``vec.backend Serial`` with one vector env of ``env.num_envs`` (1024) agents, in-process as
  ``bench`` steps them (its breakout.ini asks for 8 Multiprocessing workers x 1024, which a
  2-core machine refuses);
* its terminal dashboard is off (it redraws the screen every 0.25 s) and no checkpoint is written.

Any of PufferLib's own options can follow (its spelling, e.g. ``--vec.backend Multiprocessing
--vec.num-envs 2``, ``--train.optimizer muon``); ``--no-rnn`` drops the LSTM. Steady state starts
after ``--warmup-epochs`` whole epochs (rollout + update), as ``bench perf`` starts after PPO's
first update.

PufferLib's training install here (``scripts/install_pufferlib.py``: ``NO_TRAIN=1``) lacks what
``pufferl.py`` imports beyond the Ocean envs; this script stands in for each missing piece and says
which it replaced: ``pufferlib._C`` (its C++ advantage kernel, registered here as the same
``torch.ops.pufferlib.compute_puff_advantage`` with the loop of ``extensions/pufferlib.cpp``
``puff_advantage_row`` vectorised over segments in torch), ``psutil`` (its utilisation thread
and the Multiprocessing core check), ``pyro`` (imported by ``pufferlib.sweep``, unused here) and
``rich_argparse`` (its help formatter). When the trainer cannot run even so, one line says why and
the exit status is 2.

This is the one place besides ``envs/puffer.py`` that imports PufferLib: a measurement of another
trainer, not part of ``bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import sys
import time
import types
import warnings

GAME = "puffer_breakout"


def fail(msg: str) -> None:
    print(f"pufferlib_trainer_sps: cannot run PufferLib's trainer: {msg}", file=sys.stderr)
    sys.exit(2)


def stand_in_modules() -> list[str]:
    """Install stand-ins for the modules ``pufferl.py`` imports that this venv lacks; their names."""
    out = []
    if importlib.util.find_spec("psutil") is None:
        cores = len(os.sched_getaffinity(0))
        ps = types.ModuleType("psutil")
        ps.cpu_count = lambda logical=True: cores
        ps.cpu_percent = lambda *a, **k: 0.0
        ps.virtual_memory = lambda: types.SimpleNamespace(active=0, total=1)
        ps.Process = lambda *a, **k: types.SimpleNamespace(memory_info=lambda: types.SimpleNamespace(rss=0))
        sys.modules["psutil"] = ps
        out.append("psutil (utilisation readings 0; core count from the affinity mask)")
    if importlib.util.find_spec("pyro") is None:
        names = (
            "pyro",
            "pyro.contrib",
            "pyro.contrib.gp",
            "pyro.contrib.gp.kernels",
            "pyro.contrib.gp.models",
        )
        mods = {n: types.ModuleType(n) for n in names}
        mods["pyro.contrib"].gp = mods["pyro.contrib.gp"]
        mods["pyro.contrib.gp.kernels"].Kernel = object
        mods["pyro.contrib.gp.models"].GPRegression = object
        sys.modules.update(mods)
        out.append("pyro (pufferlib.sweep only)")
    if importlib.util.find_spec("rich_argparse") is None:
        ra = types.ModuleType("rich_argparse")
        ra.RichHelpFormatter = argparse.HelpFormatter
        sys.modules["rich_argparse"] = ra
        out.append("rich_argparse (help formatting)")
    return out


def stand_in_advantage_kernel(torch) -> str | None:
    """``pufferlib._C`` registers ``torch.ops.pufferlib.compute_puff_advantage`` (CPU: a C++ loop
    per segment). Without it, register the same op and schema in torch; None if ``_C`` imports."""
    try:
        from pufferlib import _C  # noqa: F401

        return None
    except ImportError:
        pass

    def puff_advantage(values, rewards, dones, importance, advantages, gamma, lam, rho_clip, c_clip):
        # extensions/pufferlib.cpp puff_advantage_row, all segments at once: tensors [S, horizon]
        rho, c = importance.clamp(max=rho_clip), importance.clamp(max=c_clip)  # [S, horizon]
        last = torch.zeros_like(values[:, 0])  # [S]
        for t in range(values.shape[1] - 2, -1, -1):
            nonterminal = 1.0 - dones[:, t + 1]  # [S]
            delta = rho[:, t] * (rewards[:, t + 1] + gamma * values[:, t + 1] * nonterminal - values[:, t])
            last = delta + gamma * lam * c[:, t] * last * nonterminal
            advantages[:, t] = last

    lib = torch.library.Library("pufferlib", "DEF")
    lib.define("compute_puff_advantage(Tensor(a!) values, Tensor(b!) rewards, Tensor(c!) dones, "
               "Tensor(d!) importance, Tensor(e!) advantages, float gamma, float lambda, float rho_clip, "
               "float c_clip) -> ()")  # fmt: skip
    lib.impl("compute_puff_advantage", puff_advantage, "CPU")
    stand_in_advantage_kernel.lib = lib  # the registration lives as long as this object
    sys.modules["pufferlib._C"] = types.ModuleType("pufferlib._C")
    return "pufferlib._C (advantage kernel: the C++ loop in torch, vectorised over segments)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--seconds", type=float, default=30.0, help="measured wall clock after warm-up (default 30)"
    )
    p.add_argument(
        "--warmup-epochs", type=int, default=1, help="whole epochs before the clock starts (default 1)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--num-envs", type=int, default=1024, help="agents in the one vector env (default 1024)")
    p.add_argument("--no-rnn", action="store_true", help="its feed-forward Default policy, without the LSTM")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args, puffer_args = p.parse_known_args()
    if args.seconds <= 0 or args.warmup_epochs < 0 or args.num_envs < 1:
        fail("--seconds must be > 0, --warmup-epochs >= 0, --num-envs >= 1")

    if importlib.util.find_spec("pufferlib") is None:
        fail("pufferlib is not installed in this Python (scripts/install_pufferlib.py installs it)")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    replaced = stand_in_modules()
    # pufferlib/__init__.py symlinks its render assets as ./resources into the current folder: we
    # never render, so keep the user's folder clean (as envs/puffer.py does).
    symlink, os.symlink = os.symlink, lambda *a, **k: None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import pufferlib  # noqa: F401
        kernel = stand_in_advantage_kernel(torch)
        if kernel:
            replaced.append(kernel)
        from pufferlib import pufferl
    except Exception as e:  # any import failure is the one-line answer
        fail(f"import pufferlib.pufferl: {type(e).__name__}: {e}")
    finally:
        os.symlink = symlink
    version = importlib.metadata.version("pufferlib")  # pufferlib.__version__ says 3.0
    # Its autocast context names CUDA whatever the device, and warns once that it is off on the CPU.
    warnings.filterwarnings("ignore", message="CUDA is not available", category=UserWarning)

    # (Its parser types booleans with bool(str), so "--train.compile False" would turn compile on;
    # its default is off.)
    overrides = ["--train.device", "cpu", "--train.optimizer", "adam", "--train.checkpoint-interval", str(10**9),
                 "--vec.backend", "Serial", "--vec.num-envs", "1", "--env.num-envs", str(args.num_envs)]  # fmt: skip
    argv = sys.argv
    sys.argv = [argv[0], *overrides, *puffer_args]
    try:
        cfg = pufferl.load_config(GAME)
    except SystemExit as e:
        fail(f"PufferLib's option parser refused {' '.join(puffer_args)!r} (exit {e.code})")
    finally:
        sys.argv = argv
    if args.no_rnn:
        cfg["rnn_name"] = None
        cfg["train"]["use_rnn"] = False
    if cfg["train"]["optimizer"] == "muon" and importlib.util.find_spec("heavyball") is None:
        fail("--train.optimizer muon needs the heavyball package, which is not installed")

    pufferl.PuffeRL.print_dashboard = lambda self, *a, **k: None  # redraws the terminal every 0.25 s
    train_cfg = dict(**cfg["train"], env=GAME)
    try:
        vecenv = pufferl.load_env(GAME, cfg)
        policy = pufferl.load_policy(cfg, vecenv)
        trainer = pufferl.PuffeRL(train_cfg, vecenv, policy)
    except Exception as e:
        fail(f"PuffeRL setup: {type(e).__name__}: {e}")

    try:
        for _ in range(args.warmup_epochs):
            trainer.evaluate()
            trainer.train()
        t0, s0 = time.perf_counter(), trainer.global_step
        while time.perf_counter() - t0 < args.seconds:
            trainer.evaluate()
            trainer.train()
        wall, steps = time.perf_counter() - t0, trainer.global_step - s0
    finally:
        trainer.utilization.stop()  # a non-daemon thread: the process would not exit
        vecenv.close()

    out = {
        "trainer": f"pufferlib {version} pufferl.PuffeRL", "game": GAME, "device": "cpu",
        "threads": torch.get_num_threads(), "num_envs": trainer.total_agents,
        "bptt_horizon": train_cfg["bptt_horizon"], "batch_size": train_cfg["batch_size"],
        "minibatch_size": train_cfg["minibatch_size"], "update_epochs": train_cfg["update_epochs"],
        "optimizer": train_cfg["optimizer"], "lstm": bool(train_cfg["use_rnn"]),
        "backend": cfg["vec"]["backend"], "sps": steps / wall, "window_s": wall, "epochs": trainer.epoch,
        "steady_from_env_steps": s0, "params": trainer.model_size, "replaced": replaced,
        "pufferlib_args": puffer_args,
    }  # fmt: skip
    if args.json:
        print(json.dumps(out))
        return 0
    core = "LSTMWrapper(Default, 128)" if out["lstm"] else "Default (no LSTM)"
    print(f"{out['trainer']} on {GAME}, cpu, {out['threads']} threads, {out['backend']} backend: "
          f"{out['num_envs']} envs x {out['bptt_horizon']} steps, minibatch {out['minibatch_size']}, "
          f"{out['optimizer']}, {core}")  # fmt: skip
    print(
        f"  {out['sps']:,.0f} env_steps/s steady (from env_steps {s0:,}, {wall:.1f} s, {trainer.epoch} epochs)"
    )
    print(f"  policy params {out['params']:,}")
    for r in replaced:
        print(f"  stand-in: {r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
