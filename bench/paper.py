"""``bench paper``: run the studies in ``experiments/paper/``, archive their runs, write ``docs/paper/``.

A study file is a sweep file (:mod:`bench.sweep`) plus what the findings page needs::

    name = "equal-compute"        # required: names runs/paper/<name>, results/<name>, docs/paper/<name>
    title = "Who wins at equal wall clock?"       # optional (default: name)
    question = "Does PPO or Rainbow score higher after 10 minutes of one CPU core each?"  # required
    kind = "equal_compute"        # required: how plots.paper_findings analyses it (KINDS below)
    change = "A GPU learner ..."  # optional: what would change the answer
    part = 1                      # 1 or 2 (default 1): the page's two parts
    order = 10                    # place within its part (default 0; ties by name)
    diagnostics = ["kl"]          # kind "variants" only (optional; refused with any other kind):
                                  #   learner.csv columns the analysis summarises per arm

    agents = ["ppo", "rainbow"]   # the sweep keys: agents, games or suite, seeds, time and/or steps,
    games = ["puffer_breakout"]   #   reuse, horizon, [options.AGENT], [grid.AGENT], preset_files,
    seeds = 3                     #   eval_episodes, workers (bench/sweep.py says what each does)
    time = "10m"
    workers = 2                   # runs at a time: fixes each run's CPU share, part of the setup

    [arms.rainbow-1env]           # optional labelled arms: runs labelled rainbow-1env on every game
    agent = "rainbow"             #   and seed, with these options (an arm is one configuration: it
    num_envs = 1                  #   is not crossed with reuse, horizon or grid); with arms,
    preset_file = "tuned.toml"    #   'agents' may be left out; preset_file: relative to this file

Where things go (``--runs``, ``--results``, ``--docs`` move them):

    runs/paper/<name>/<label>/<game>/seed<k>/  runs as they train: every file, checkpoint.pt too,
                                                so a killed run resumes (gitignored)
    results/<name>/<label>/<game>/seed<k>/     each finished run's small files (committed):
                                                config.json eval.csv compute.json done packages.txt
                                                code.diff, metrics.csv.gz (every row, gzipped),
                                                learner.csv.gz (thinned to at most 1000 rows),
                                                archive.json saying what was left
    results/<name>/study.toml                  the study file its runs came from
    results/<name>/report/                     ``bench report`` plus the study's analysis; its
                                                summary.json carries a "study" section
    docs/paper/README.md, docs/paper/<name>/   the findings page; each study's summary.json and figures

Resume: a run is finished when its archive holds a ``done`` marker (a fresh clone with results/
runs nothing); a run done under runs/paper is archived and skipped; any other run is started or
resumed from its checkpoint by :func:`bench.runner.run_local`. Archives are written ``done`` last,
so a kill mid-copy leaves an unfinished archive that the next invocation copies again. Every step
can be killed and the same command rerun; nothing is run twice.

``bench report results/<name>`` sees ``study.toml`` and runs the same analysis
(:func:`analyse_study`), so it rewrites the same summary.json from the committed files alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import re
import shlex
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.runner import RunSpec

# Keys only a study file has; the sweep keys it takes are below. Sinks, videos and label suffixes
# (the rest of bench.sweep's keys) write files the archive does not keep or rename the runs the
# page names, so studies leave them to bench sweep.
STUDY_KEYS = frozenset({"title", "question", "kind", "change", "part", "order", "arms", "diagnostics"})
SWEEP_KEYS = frozenset({"name", "agents", "games", "suite", "seeds", "time", "steps", "reuse", "horizon", "options",
                        "grid", "preset_files", "eval_episodes", "workers"})  # fmt: skip
# The analyses plots.paper_findings.analyse knows (kept here so that checking a file needs no
# matplotlib).
KINDS = ("equal_compute", "reuse", "horizon", "arms", "ablation", "variants")
# Folder names a label cannot take: they sit beside the label folders (runs/paper/<name>/logs,
# results/<name>/report).
RESERVED_LABELS = frozenset({"logs", "report"})
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # names folders
# What an archive keeps of a run folder, copied as is; the two ledgers are gzipped (learner.csv
# thinned first) and ``done`` goes last. A PPO run on an Ocean game logs a metrics row every 10K
# env steps, ~3K rows (250 KB) in 2 minutes: gzip keeps every row (the scores are computed from
# them, exactly) at about a quarter of the size. plots.load reads NAME.csv.gz where NAME.csv is absent.
ARCHIVED = ("config.json", "eval.csv", "compute.json", "packages.txt", "code.diff")
GZIPPED = ("metrics.csv", "learner.csv")
ARCHIVE_FILES = frozenset({*ARCHIVED, *(f + ".gz" for f in GZIPPED), "archive.json", "done"})
# learner.csv holds a row per learning update (hundreds of thousands in a long Rainbow run); only a
# variants study's diagnostics read it (means over the second half of training, curves against wall
# clock), and evenly spaced rows keep both, so a thinned copy is enough.
LEARNER_ROWS = 1000
# Seconds a run costs beyond its time budget: interpreter and torch import, env creation, the
# final checkpoint (measured ~5-15 s on the 2-core machine; evaluations are not included).
OVERHEAD_S = 15.0


def add_arguments(p: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "Each study file in --studies (TOML: a sweep file plus name, question, kind; see bench/paper.py)\n"
        "expands into runs that train under --runs (resumable, gitignored). A finished run is archived\n"
        "to --results/<name>/ (small files only, to commit) and never run again; a study whose runs are\n"
        "all archived is analysed into --results/<name>/report/ and published to --docs, whose\n"
        "README.md is the findings page. Kill it at any point and rerun the same command to resume.\n"
        "On a fresh clone `bench report results/<name>` redraws a study from the archive alone."
    )
    p.add_argument("--only", nargs="+", action="extend", default=None, metavar="NAME",
                   help="run and analyse only these studies (their 'name'); the page still lists every study")  # fmt: skip
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="print each study's runs (total, finished, to run) and the estimated wall clock of "
                           "what is left; run and write nothing")  # fmt: skip
    mode.add_argument("--no-run", action="store_true",
                      help="train nothing: archive runs already done under --runs, analyse the studies whose "
                           "runs are all archived, write the page")  # fmt: skip
    p.add_argument("--studies", default="experiments/paper", metavar="DIR",
                   help="folder of study files, *.toml (default experiments/paper)")  # fmt: skip
    p.add_argument("--runs", default="runs/paper", metavar="DIR",
                   help="where runs train, one folder per study (default runs/paper)")  # fmt: skip
    p.add_argument("--results", default="results", metavar="DIR",
                   help="where finished runs are archived, DIR/<name>/ per study (default results)")  # fmt: skip
    p.add_argument("--docs", default="docs/paper", metavar="DIR",
                   help="the findings page and its figures (default docs/paper)")  # fmt: skip
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="runs at a time for studies whose file sets no 'workers' (default: one per core); a "
                        "file's 'workers' wins, as it fixes each run's CPU share")  # fmt: skip
    p.add_argument("--reps", type=int, default=2000,
                   help="bootstrap draws per confidence interval (default 2000, as bench report)")  # fmt: skip


# Study files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    path: Path  # the study file
    name: str  # folder names
    title: str
    question: str
    kind: str  # one of KINDS
    change: str  # what would change the answer ("" when the file says nothing)
    part: int  # 1 or 2
    order: int  # place within the part
    cfg: dict[str, Any]  # the whole file, checked (a suite's games filled in): what analyse() receives

    @property
    def arms(self) -> dict[str, dict[str, Any]]:
        return self.cfg.get("arms", {})

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return self.part, self.order, self.name


def load_study(path: str | Path) -> Study:
    """The study file at ``path``, every key checked; any problem is one line naming the file and key."""
    import agents
    from bench.sweep import check_sweep, read_toml

    text = str(path)
    cfg = read_toml(text, "study file", "experiments/paper/*.toml")
    arms = cfg.get("arms", {})
    check_sweep(cfg, text, SWEEP_KEYS | STUDY_KEYS, agents_optional=isinstance(arms, dict) and bool(arms))
    name = cfg.get("name")
    if name is None:
        raise UserError(f"{text}: missing 'name' (it names the study's folders, e.g. name = \"equal-compute\")")
    if not NAME.fullmatch(name):
        raise UserError(f"{text}: name = {name!r} must be letters, digits and - _ . + (it names folders)")
    for key, required in (("question", True), ("title", False), ("change", False)):
        v = cfg.get(key)
        if v is None and required:
            raise UserError(f"{text}: missing '{key}' (what the study asks, one sentence)")
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise UserError(f"{text}: {key} = {v!r} must be a non-empty string")
    kind = cfg.get("kind")
    if kind is None:
        raise UserError(f"{text}: missing 'kind' (how the study is analysed: {', '.join(KINDS)})")
    if kind not in KINDS:
        raise UserError(f"{text}: kind = {kind!r} is not a known analysis ({', '.join(KINDS)})")
    diag = cfg.get("diagnostics")
    if diag is not None:
        if not isinstance(diag, list) or not diag or not all(isinstance(c, str) and c.strip() for c in diag):
            raise UserError(f"{text}: diagnostics = {diag!r} must be a non-empty list of learner.csv column names, "
                            'e.g. ["clip_frac", "kl"]')  # fmt: skip
        # Refused rather than ignored: only the variants analysis reads it, so elsewhere it would
        # promise numbers the page never shows.
        if kind != "variants":
            raise UserError(f"{text}: diagnostics is read only by kind = \"variants\" (this study is kind = "
                            f"{kind!r}); remove it or change the kind")  # fmt: skip
    part, order = cfg.get("part", 1), cfg.get("order", 0)
    if part not in (1, 2) or isinstance(part, bool):
        raise UserError(f"{text}: part = {part!r} must be 1 or 2")
    if not isinstance(order, int) or isinstance(order, bool):
        raise UserError(f"{text}: order = {order!r} must be a whole number (the study's place in its part)")
    if not isinstance(arms, dict) or not all(isinstance(t, dict) for t in arms.values()):
        raise UserError(f"{text}: arms must be [arms.LABEL] tables, each with agent = \"NAME\" and options")
    known = agents.available()
    for label, arm in arms.items():
        where = f"{text}: [arms.{label}]"
        if not NAME.fullmatch(label) or label in RESERVED_LABELS:
            raise UserError(f"{where}: the label must be letters, digits and - _ . + (it names folders), "
                            f"not {' or '.join(sorted(RESERVED_LABELS))}")  # fmt: skip
        agent = arm.get("agent")
        if agent is None:
            raise UserError(f"{where}: missing agent = \"NAME\" ({', '.join(known)})")
        if agent not in known:
            raise UserError(f"{where} agent = {agent!r}: unknown agent (agents: {', '.join(known)})")
        pf = arm.get("preset_file")
        if pf is not None and (not isinstance(pf, str) or not pf):
            raise UserError(f"{where} preset_file = {pf!r} must be a preset file path")
        for k, v in arm.items():
            if isinstance(v, (dict, list)):
                raise UserError(f"{where} {k} = {v!r}: an arm option takes one value (an arm is one configuration)")
    return Study(path=Path(text), name=name, title=cfg.get("title") or name, question=cfg["question"], kind=kind,
                 change=cfg.get("change") or "", part=part, order=order, cfg=cfg)  # fmt: skip


def load_studies(folder: Path) -> list[Study]:
    """Every study file in ``folder``, in page order; study names must be unique."""
    if not folder.is_dir():
        raise UserError(f"--studies {folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise UserError(f"--studies {folder}: no study files (*.toml) in it")
    studies: dict[str, Study] = {}
    for f in files:
        s = load_study(f)
        if s.name in studies:
            raise UserError(f"{f}: name = {s.name!r} is taken by {studies[s.name].path}; give each study its own")
        studies[s.name] = s
    return sorted(studies.values(), key=lambda s: s.sort_key)


def study_specs(study: Study, runs_root: Path) -> list[RunSpec]:
    """The study's runs, under ``runs_root/<name>/<label>/<game>/seed<k>``: the agents' runs as
    bench sweep expands them, then each arm on every game and seed. Every config is resolved and
    range-checked here (bench.compare.expand), before anything runs."""
    import envs
    from bench.compare import MAX_RUNS, expand
    from bench.config import parse_duration, parse_steps
    from bench.preset import load_preset
    from bench.sweep import run_count, specs_from

    cfg, path = study.cfg, str(study.path)
    seeds = cfg.get("seeds", 1)
    seed_list = list(range(1, seeds + 1)) if isinstance(seeds, int) else list(dict.fromkeys(seeds))
    n = run_count(cfg) + len(study.arms) * len(cfg["games"]) * len(seed_list)
    if n > MAX_RUNS:  # counted before expanding: seeds = 100000 is a typo, not a plan
        raise UserError(f"{path}: {n:,} runs in one study; more than {MAX_RUNS:,} is refused (a typo in seeds?)")
    out = runs_root / study.name
    specs = specs_from(cfg, out, path)
    steps = parse_steps(cfg.get("steps"), f"{path}: steps =") if cfg.get("steps") is not None else None
    time_s = parse_duration(cfg.get("time"), f"{path}: time =") if cfg.get("time") is not None else None
    taken = {s.label: s.agent for s in specs}
    for label, arm in study.arms.items():
        where = f"{path}: [arms.{label}]"
        if label in taken:
            raise UserError(f"{where}: label {label!r} is also the label of the {taken[label]} runs from 'agents'; "
                            "rename the arm")  # fmt: skip
        agent = arm["agent"]
        opts = {k: v for k, v in arm.items() if k not in ("agent", "preset_file")}
        presets = {}
        if "preset_file" in arm:
            pf = Path(arm["preset_file"])
            pre = load_preset(pf if pf.is_absolute() else study.path.parent / pf, f"{where} preset_file")
            if pre.agent != agent:
                raise UserError(f"{where} preset_file {arm['preset_file']}: a preset for {pre.agent}, the arm runs {agent}")
            presets[agent] = pre

        def spell(a, k, v, where=where):
            return f"{where} {k} = {v!r}"

        for game in cfg["games"]:
            try:
                envs.check_game(game)
            except envs.UnknownGame as e:
                raise UserError(f"{path}: {e}") from None
            sub = expand([agent], game, max(seed_list), out, steps, time_s, {agent: opts}, None, None,
                         cfg.get("eval_episodes", 0), spell, presets=presets)  # fmt: skip
            game_dir = game.replace(":", "_").replace("/", "_")
            specs += [dataclasses.replace(s, label=label, out=str(out / label / game_dir / f"seed{s.seed}"))
                      for s in sub if s.seed in seed_list]  # fmt: skip
    if not specs:
        raise UserError(f"{path}: no runs (give agents = [...] or [arms.LABEL] tables)")
    return specs


# Archive -----------------------------------------------------------------------------------


def archive_of(spec: RunSpec, runs_root: Path, results_root: Path) -> Path:
    """Where ``spec``'s run is archived: the same relative path under ``results_root``."""
    return results_root / Path(spec.out).relative_to(runs_root)


def thin_lines(lines: list[str], keep: int) -> list[str]:
    """The header and at most ``keep`` (>= 2) of the data rows: the first, the last and evenly
    spaced rows between (all of them when there are no more than ``keep``)."""
    header, rows = lines[:1], lines[1:]
    if len(rows) <= keep:
        return list(lines)
    # With more rows than kept the spacing exceeds 1, so the rounded indices are distinct.
    idx = sorted({round(i * (len(rows) - 1) / (keep - 1)) for i in range(keep)})
    return header + [rows[i] for i in idx]


def archive_run(src: Path, dst: Path) -> None:
    """Copy a finished run's small files from ``src`` to ``dst``, learner.csv thinned, ``done``
    last: an archive is finished exactly when it holds ``done``, so one cut short by a kill is
    copied again, whole, next time."""
    from bench.results import _ATOMIC_TMP, atomic_write_bytes, atomic_write_json

    if dst.exists():
        stray = sorted(p.name for p in dst.iterdir() if p.name not in ARCHIVE_FILES and not _ATOMIC_TMP.fullmatch(p.name))
        if stray:
            raise UserError(f"{dst} holds files that are not an archived run ({', '.join(stray[:3])}); move them away")
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in ARCHIVED:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    note: dict[str, Any] = {"from": str(src), "archived": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "left_out": sorted(p.name for p in src.iterdir() if p.name not in ARCHIVE_FILES)}  # fmt: skip
    if (src / "metrics.csv").is_file():
        # mtime=0: the same run archives to the same bytes
        atomic_write_bytes(dst / "metrics.csv.gz", gzip.compress((src / "metrics.csv").read_bytes(), mtime=0))
    learner = src / "learner.csv"
    if learner.is_file():
        lines = learner.read_text().split("\n")
        lines = lines[:-1]  # what follows the last newline: "" (or a torn row, never a finished one)
        kept = thin_lines(lines, LEARNER_ROWS)
        data = "".join(ln + "\n" for ln in kept).encode()
        atomic_write_bytes(dst / "learner.csv.gz", gzip.compress(data, mtime=0))
        note["learner_csv"] = {"rows": max(len(lines) - 1, 0), "kept": max(len(kept) - 1, 0),
                               "how": "header, first and last rows, evenly spaced rows between"}  # fmt: skip
    atomic_write_json(dst / "archive.json", note)
    atomic_write_bytes(dst / "done", (src / "done").read_bytes())


def check_matches(spec: RunSpec, folder: Path, study: Study) -> None:
    """UserError unless the run in ``folder`` is the one ``spec`` asks for (agent, budget and every
    option the study sets): a study file edited after its runs must not pool old runs with new."""
    from bench.results import RunDir

    cfg = RunDir(folder).config()
    run, agent_cfg = cfg["run"], cfg.get("agent") or {}
    was = {"agent": run.get("agent"), "steps": run.get("steps"), "time_s": run.get("time_s")}
    asks = {"agent": spec.agent, "steps": spec.steps, "time_s": spec.time_s}
    differ = [f"{k} {was[k]} (study: {asks[k]})" for k in was if was[k] != asks[k]]
    differ += [f"{k}={agent_cfg.get(k)!r} (study: {v!r})" for k, v in sorted(spec.overrides.items())
               if agent_cfg.get(k) != v]  # fmt: skip
    if differ:
        raise UserError(f"{folder} holds a run with {', '.join(differ[:3])}: {study.path} changed since; "
                        "move that folder away to rerun it, or restore the study file")  # fmt: skip


# Plan --------------------------------------------------------------------------------------


@dataclass
class Plan:
    study: Study
    runs_root: Path
    results_root: Path
    specs: list[RunSpec]
    workers: int  # runs at a time; each gets cores // workers cores
    archived: list[RunSpec] = dataclasses.field(default_factory=list)  # finished and archived
    to_archive: list[RunSpec] = dataclasses.field(default_factory=list)  # done under --runs, not yet archived
    failed: list[RunSpec] = dataclasses.field(default_factory=list)  # stopped on a NaN/inf loss: left alone
    todo: list[RunSpec] = dataclasses.field(default_factory=list)  # to start or resume
    error: str = ""  # why the study could not be expanded (a study not chosen by --only; no specs then)

    @property
    def finished(self) -> int:
        return len(self.archived) + len(self.to_archive)

    @property
    def complete(self) -> bool:
        return bool(self.specs) and len(self.archived) == len(self.specs)

    def archive(self, spec: RunSpec) -> Path:
        return archive_of(spec, self.runs_root, self.results_root)


def make_plan(study: Study, runs_root: Path, results_root: Path, workers: int | None) -> Plan:
    """The study's runs sorted by state. Workers: the file's, else ``workers``, else one per core;
    never fewer because fewer runs are left, which would change the CPU share mid-study."""
    from bench.results import RunDir
    from bench.runner import allowed_cpus

    specs = study_specs(study, runs_root)
    plan = Plan(study, runs_root, results_root, specs, study.cfg.get("workers") or workers or len(allowed_cpus()))
    for s in specs:
        arch, run = plan.archive(s), RunDir(s.out)
        if RunDir(arch).status == "done":
            check_matches(s, arch, study)
            plan.archived.append(s)
            continue
        status = run.check()  # new, or an intact run; anything else is one line
        if status != "new":
            check_matches(s, run.path, study)
        {"done": plan.to_archive, "failed": plan.failed}.get(status, plan.todo).append(s)
    return plan


def estimate_s(plan: Plan) -> float | None:
    """Seconds until the plan's runs are done: each run's remaining time budget plus OVERHEAD_S,
    handed to ``workers`` slots in order as the pool does; None when a run has only a step budget."""
    from bench.runner import progress_of

    if any(s.time_s is None for s in plan.todo):
        return None
    slots = [0.0] * plan.workers
    for s in plan.todo:
        i = slots.index(min(slots))
        slots[i] += (1.0 - progress_of(s)[0]) * s.time_s + OVERHEAD_S
    return max(slots, default=0.0)


def duration_text(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def plan_line(plan: Plan) -> str:
    """'study equal-compute: 108 runs, 40 finished, 68 to run, ~1.1 h (2 at a time)'."""
    est = estimate_s(plan) if plan.todo else 0.0
    eta = "time unknown (step budget)" if est is None else f"~{duration_text(est)}"
    failed = f", {len(plan.failed)} failed earlier" if plan.failed else ""
    when = f", {eta} ({plan.workers} at a time)" if plan.todo else ""
    return (f"study {plan.study.name}: {len(plan.specs)} runs, {plan.finished} finished, {len(plan.todo)} to run"
            f"{failed}{when}")  # fmt: skip


def print_dry_run(plans: list[Plan]) -> None:
    for p in plans:
        print(plan_line(p))
    print(f"estimate: each run's remaining time budget + {OVERHEAD_S:g} s start-up, in waves of the study's "
          "workers; evaluations and analysis not included")  # fmt: skip
    groups = [(f"part {k}", [p for p in plans if p.study.part == k]) for k in (1, 2)] + [("total", plans)]
    for what, ps in groups:
        if not ps:
            continue
        known = [e for p in ps if p.todo and (e := estimate_s(p)) is not None]
        unknown = sum(len(p.todo) for p in ps if p.todo and estimate_s(p) is None)
        extra = f" + {unknown} step-budgeted run(s) of unknown duration" if unknown else ""
        print(f"{what}: {len(ps)} studies, {sum(len(p.specs) for p in ps)} runs, "
              f"{sum(p.finished for p in ps)} finished, {sum(len(p.todo) for p in ps)} to run, "
              f"~{duration_text(sum(known))}{extra}")  # fmt: skip


def check_share(plan: Plan) -> None:
    """Refuse to run a study's remaining runs on another CPU share than its finished runs had: the
    report would not pool the two (hardware fingerprints differ) after all the training."""
    from bench.fingerprint import cpu_id, cpu_model
    from bench.runner import allowed_cpus

    cpus = allowed_cpus()
    if plan.workers > len(cpus):
        raise UserError(f"study {plan.study.name}: {plan.workers} runs at a time, but only {len(cpus)} cores here; "
                        "equal pinned shares need workers <= cores")  # fmt: skip
    share, model = len(cpus) // plan.workers, cpu_model()
    for s in plan.archived[:1]:
        fp = _read(plan.archive(s) / "config.json").get("fingerprint") or {}
        if fp.get("cpu_id"):  # recorded since 2026-12: compare it too (older archives: the name alone)
            model, fp = f"{model} [{cpu_id()}]", {**fp, "cpu": f"{fp.get('cpu')} [{fp['cpu_id']}]"}
        if None not in (fp.get("cpu"), fp.get("cores_allowed")) and (fp["cpu"], fp["cores_allowed"]) != (model, share):
            raise UserError(f"study {plan.study.name}: its finished runs had {fp.get('cores_allowed')} core(s) of "
                            f"'{fp.get('cpu')}' each; here {plan.workers} at a time give {share} of '{model}', and "
                            "the report would not pool them: resume on that machine with the same workers")  # fmt: skip


# Analysis ----------------------------------------------------------------------------------


def hardware_text(fingerprints: list[dict]) -> str:
    """'Intel(R) Xeon(R) Processor (family 6 model 167, AVX512), 1 of 2 cores per run, no GPU';
    several: joined with '; '."""

    # Archives from before cpu_id was recorded: where the same CPU name also appears with its
    # family/model, say the older runs' is unknown rather than list the machine twice unexplained.
    identified = {fp.get("cpu") for fp in fingerprints if fp.get("cpu_id")}

    def cpu(fp: dict) -> str:
        ident = ", ".join(x for x in (fp.get("cpu_id"), fp.get("cpu_isa")) if x)
        if not ident and fp.get("cpu") in identified:
            ident = "family/model not recorded"
        return f"{fp.get('cpu') or '?'}" + (f" ({ident})" if ident else "")

    seen = dict.fromkeys(
        f"{cpu(fp)}, {fp.get('cores_allowed') or '?'} of {fp.get('cores') or '?'} cores per run, "
        + (f"GPU {fp['gpu']}" if fp.get("gpu") else "no GPU")
        for fp in fingerprints
    )
    return "; ".join(seen) or "?"


def analyse_study(folder: Path, opts) -> tuple[Any, list[Path], dict]:
    """``bench report`` on a study's archive (``folder`` holds study.toml) plus the study's own
    analysis (plots.paper_findings); summary.json gets a "study" section. Returns (Numbers, files
    written, the study section). ``bench paper`` and ``bench report FOLDER`` both come here, so
    the two write the same numbers."""
    from bench.results import atomic_write_bytes
    from plots.paper_findings import analyse
    from plots.report import build_report
    from plots.report_json import _clean, summary_json

    study = load_study(folder / "study.toml")
    if opts.suite is None:
        opts.suite = study.cfg.get("suite")
    fig_dir = opts.out / "figures"
    if fig_dir.is_dir() and opts.out.resolve() == (folder / "report").resolve():
        for f in fig_dir.iterdir():  # figures of an earlier analysis that this one may not redraw
            if f.suffix in (".png", ".pdf", ".svg"):
                f.unlink()
    num, files = build_report([folder], opts)
    hardware = hardware_text([r.fingerprint for r in num.runs])
    res = analyse(study.kind, study.cfg, num, fig_dir, hardware)
    section = {"name": study.name, "title": study.title, "question": study.question, "kind": study.kind,
               "numbers": res.numbers, "answer": res.answer, "change": res.change or study.change,
               "command": f"bench paper --only {study.name}", "hardware": hardware, "runs": len(num.runs),
               "figures": [_relative(f, opts.out) for f in res.figures]}  # fmt: skip
    doc = summary_json(num, opts.out)
    doc = {"schema": doc.pop("schema"), "study": _clean(section), **doc}
    atomic_write_bytes(opts.out / "summary.json", (json.dumps(doc, indent=1) + "\n").encode())
    return num, files + [Path(f) for f in res.figures if Path(f) not in files], doc["study"]


def _relative(path: str | Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # drawn outside the report folder: named as given
        return str(path)


# Figures of the standard report worth a place in docs/paper/<name>/ (file stems), besides the
# study's own; per-game curves are added when there is no cross-game aggregate or few games.
DOC_FIGURES = ("curves_aggregate", "final_vs_reuse", "final_vs_horizon", "aggregate_intervals",
               "probability_of_improvement", "compute")  # fmt: skip


def publish(name: str, results_root: Path, docs_root: Path) -> list[str]:
    """Copy a study's summary.json and key figures (PNG + PDF) from results/<name>/report/ to
    docs/paper/<name>/ (replacing what was there); returns the PNG names, study figures first."""
    report = results_root / name / "report"
    doc = json.loads((report / "summary.json").read_text())
    stems = [Path(f).with_suffix("").as_posix() for f in doc["study"]["figures"]]
    standard = [Path(f).with_suffix("").as_posix() for f in doc.get("figures", [])]
    games = sorted({r["game"] for r in doc.get("runs", [])})
    curves = [s for s in standard if Path(s).name.startswith("curves_") and Path(s).name != "curves_aggregate"]
    if "figures/curves_aggregate" not in standard or len(games) <= 3:
        stems += curves
    stems += [s for s in standard if Path(s).name in DOC_FIGURES]
    stems = list(dict.fromkeys(stems))
    tmp = docs_root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shutil.copy2(report / "summary.json", tmp / "summary.json")
    pngs = []
    for stem in stems:
        for suffix in (".png", ".pdf"):
            src = report / f"{stem}{suffix}"
            if src.is_file():
                shutil.copy2(src, tmp / src.name)
        if (tmp / f"{Path(stem).name}.png").is_file():
            pngs.append(f"{Path(stem).name}.png")
    dst = docs_root / name
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return pngs


# The page ----------------------------------------------------------------------------------


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def first_sentence(text: str) -> str:
    m = re.match(r"\s*(.+?[.!?])(?=\s|$)", text, re.S)
    return (m.group(1) if m else text).strip().replace("\n", " ")


def _kv(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def setup_text(plan: Plan) -> list[str]:
    """The 'Setup' bullet lines of a study's section, from its file and runs."""
    cfg, s0 = plan.study.cfg, plan.specs[0]
    who = []
    for a in cfg["agents"]:
        opts, grid = cfg.get("options", {}).get(a, {}), cfg.get("grid", {}).get(a, {})
        who.append(f"{a}" + (f" ({_kv(opts)})" if opts else "") + (f", over {_kv(grid)}" if grid else ""))
    knobs = [f"sample-reuse ratio {cfg['reuse']}" if cfg.get("reuse") else "",
             f"bootstrap horizon {cfg['horizon']}" if cfg.get("horizon") else ""]  # fmt: skip
    if cfg["agents"] and any(knobs):
        who[-1] += "; each at " + " and ".join(k for k in knobs if k)
    for label, arm in plan.study.arms.items():
        opts = {k: v for k, v in arm.items() if k not in ("agent", "preset_file")}
        pre = f", tuned preset {arm['preset_file']}" if arm.get("preset_file") else ""
        who.append(f"`{label}`: {arm['agent']}" + (f" with {_kv(opts)}" if opts else "") + pre)
    games = cfg["games"]
    where = f"suite {cfg['suite']} ({len(games)} games)" if cfg.get("suite") else ", ".join(games)
    seeds = cfg.get("seeds", 1)
    seed_txt = f"{seeds}" if isinstance(seeds, int) else f"{len(set(seeds))} ({', '.join(map(str, seeds))})"
    budget = [f"{s0.steps:,} env steps" if s0.steps else "", f"{duration_text(s0.time_s)} of training wall clock"
              if s0.time_s else ""]  # fmt: skip
    labels = Counter(s.label for s in plan.specs)
    return [f"Agents and arms: {'; '.join(who)}",
            f"Games: {where}; seeds: {seed_txt}",
            f"Budget per run: {' and at most '.join(b for b in budget if b)}"
            + (f", then {cfg['eval_episodes']} greedy evaluation episodes" if cfg.get("eval_episodes") else ""),
            f"Runs: {len(plan.specs)} ({len(labels)} labels x {len(games)} game(s) x seeds), "
            f"{plan.workers} at a time, each pinned to an equal share of the cores"]  # fmt: skip


def study_section(plan: Plan, results_root: Path, docs_root: Path) -> tuple[list[str], str, bool]:
    """(markdown lines, headline, complete) of one study on the page."""
    st = plan.study
    lines = [f"### {st.title}", "", f"**Question.** {st.question}", ""]
    if plan.error:
        why = f"cannot be planned yet: {plan.error}"
        return lines + [f"**Status:** {why}", ""], why, False
    lines += ["**Setup.**", ""] + [f"- {x}" for x in setup_text(plan)]
    # The report folder is not committed; the copy under docs/ is, so a page rebuilt on a fresh
    # clone with --only keeps the other studies' published sections.
    doc = _read(results_root / st.name / "report" / "summary.json") or _read(docs_root / st.name / "summary.json")
    # An analysis of fewer runs than the study now has (its file grew since) is not shown either.
    complete = plan.complete and (doc.get("study") or {}).get("runs") == len(plan.specs)
    if not complete:
        why = (f"not yet run ({plan.finished} of {len(plan.specs)} runs finished"
               + (f", {len(plan.failed)} failed" if plan.failed else "") + ")")  # fmt: skip
        if plan.finished == len(plan.specs):
            why = f"all {len(plan.specs)} runs finished, not yet analysed"
        lines += ["", f"**Status:** {why}. Run `bench paper --only {st.name}`.", ""]
        return lines, why, False
    sec = doc["study"]
    wall = sum(r.get("wall_s") or 0.0 for r in doc.get("runs", []))
    lines += [f"- Hardware: {sec.get('hardware', '?')}; training wall clock of all runs: {duration_text(wall)}", ""]
    # The study's own figures, then learning curves (aggregate first), then the rest as DOC_FIGURES
    # lists them: the first two are shown, the others linked.
    order = [Path(f).with_suffix(".png").name for f in sec.get("figures", [])] + ["curves_aggregate.png"]
    rest = [f"{stem}.png" for stem in DOC_FIGURES]

    def rank(p: Path) -> tuple[int, int, str]:
        if p.name in order:
            return 0, order.index(p.name), p.name
        if p.name.startswith("curves_"):
            return 1, 0, p.name
        return 2, rest.index(p.name) if p.name in rest else len(rest), p.name

    pngs = sorted((docs_root / st.name).glob("*.png"), key=rank)
    for p in pngs[:2]:
        pdf = p.with_suffix(".pdf")
        link = f" ([PDF]({st.name}/{pdf.name}))" if pdf.is_file() else ""
        lines += [f"![{p.stem}]({st.name}/{p.name}){link}", ""]
    if len(pngs) > 2:
        lines += ["More figures: " + ", ".join(f"[{p.stem}]({st.name}/{p.name})" for p in pngs[2:]), ""]
    lines += [f"**Answer.** {sec['answer']}", ""]
    if sec.get("change"):
        lines += [f"**What would change it:** {sec['change']}", ""]
    lines += [f"**Reproduce:** `{sec['command']}` runs what is missing; `bench report {results_root / st.name}` "
              f"redraws the figures and rewrites [summary.json]({st.name}/summary.json) from the archive alone.", ""]  # fmt: skip
    warnings = list(doc.get("mixed") or [])
    share = doc.get("cpu_share") or {}  # runs the report flags for getting less CPU than their cores
    if share.get("flagged"):
        flagged = share["flagged"]
        warnings.append(f"{len(flagged)} run(s) had a CPU share below {share.get('threshold')} of their cores while "
                        f"training (summary.json cpu_share), e.g. {flagged[0]}")  # fmt: skip
    warnings += list(doc.get("notes") or [])
    if warnings:
        lines += ["**Warnings from the report:**", ""] + [f"- {w}" for w in warnings[:8]]
        if len(warnings) > 8:
            lines.append(f"- ... {len(warnings) - 8} more in results/{st.name}/report/summary.md")
        lines.append("")
    return lines, first_sentence(sec["answer"]), True


def write_readme(plans: list[Plan], results_root: Path, docs_root: Path) -> Path:
    """docs/paper/README.md, from the archives and each study's summary.json (never from memory:
    a study not yet complete says so and shows no numbers). Written atomically."""
    from bench.results import atomic_write_bytes

    runs, dates, fps = 0, [], []
    wall = 0.0
    for p in plans:
        for folder in map(p.archive, p.archived):
            runs += 1
            comp = _read(folder / "compute.json")
            wall += float(comp.get("train_wall_s") or 0.0)
            dates.append(str(_read(folder / "archive.json").get("archived", ""))[:10])
            fps.append(_read(folder / "config.json").get("fingerprint") or {})
    dates = sorted(d for d in dates if d)
    when = (f"runs archived {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else "")) if dates else "no runs yet"
    complete = 0
    sections: list[str] = []
    heads: list[str] = []
    for part in (1, 2):
        ps = [p for p in plans if p.study.part == part]
        if not ps:
            continue
        sections += [f"## Part {part}", ""]
        heads += [f"Part {part}:", ""]
        for p in ps:
            lines, head, done = study_section(p, results_root, docs_root)
            complete += done
            sections += lines
            heads.append(f"- [{p.study.title}](#{_anchor(p.study.title)}): {head}")
        heads.append("")
    text = "\n".join([
        "# Findings: on-policy vs off-policy RL at equal compute", "",
        f"Produced by `bench paper` from the study files in `experiments/paper/` ({len(plans)} "
        f"{'study' if len(plans) == 1 else 'studies'}, {complete} complete): {runs} runs, {duration_text(wall)} of training wall clock in all "
        f"(compute.json `train_wall_s`), on {hardware_text(fps) if fps else 'no machine yet'}; {when}. "
        "Each finished run's files are committed under `results/<study>/`, so `bench report results/<study>` "
        "redraws a study's figures and reproduces its summary.json on a fresh clone without training; "
        "`bench paper --dry-run` says what is left to run. Every number below is in the study's "
        "`summary.json` (its `study` section), with 95% bootstrap confidence intervals.", "",
        "## Summary", "", *heads, *sections,
    ]).rstrip("\n") + "\n"  # fmt: skip
    docs_root.mkdir(parents=True, exist_ok=True)
    out = docs_root / "README.md"
    atomic_write_bytes(out, text.encode())
    return out


def _read(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


# Command -----------------------------------------------------------------------------------


def archive_finished(plan: Plan) -> int:
    """Archive the plan's runs that are done under --runs and not yet archived, and sort the rest
    again (a run may have finished, or failed, since the plan was made); returns how many."""
    from bench.results import RunDir

    n, todo = 0, []
    for s in plan.to_archive + plan.todo:
        arch = plan.archive(s)
        status = RunDir(s.out).status
        if status == "done":
            archive_run(Path(s.out), arch)
            n += 1
            plan.archived.append(s)
        elif status == "failed":
            plan.failed.append(s)
        else:
            todo.append(s)
    plan.to_archive, plan.todo = [], todo
    return n


def run_study(plan: Plan, args: argparse.Namespace, runs_root: Path, results_root: Path) -> list[str]:
    """Archive, run what is left, archive again; returns the failure lines."""
    from bench.runner import run_local

    st = plan.study
    if plan.archived or plan.to_archive or (plan.todo and not args.no_run):
        (results_root / st.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(st.path, results_root / st.name / "study.toml")
    n = archive_finished(plan)
    if n:
        print(f"  archived {n} run(s) finished earlier into {results_root / st.name}", flush=True)
    failures = [f"{s.out}: failed earlier ({_read(Path(s.out) / 'failed').get('reason', '?')}); "
                "remove the folder to run it again" for s in plan.failed]  # fmt: skip
    if not plan.todo or args.no_run:
        return failures
    check_share(plan)
    logs = runs_root / st.name / "logs"
    try:
        results = run_local(plan.todo, plan.workers, logs)
    finally:  # a Ctrl-C too: what finished is archived before the command stops
        n = archive_finished(plan)
        print(f"  archived {n} run(s) into {results_root / st.name}", flush=True)
    failures += [f"{out}: {v}" for out, v in results.items() if v.startswith("failed")]
    return failures


def main(args: argparse.Namespace) -> int:
    from bench.results import check_target_dir
    from plots.report import Options as ReportOptions

    for flag, v in (("--studies", args.studies), ("--runs", args.runs), ("--results", args.results),
                    ("--docs", args.docs)):  # fmt: skip
        if v == "":
            raise UserError(f"{flag} '': empty path")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers} must be >= 1")
    if args.reps < 1:
        raise UserError(f"--reps {args.reps} must be >= 1")
    runs_root, results_root, docs_root = Path(args.runs), Path(args.results), Path(args.docs)
    if runs_root.resolve() == results_root.resolve():
        raise UserError(f"--runs and --results are the same folder ({runs_root}); runs train apart from their archive")
    studies = load_studies(Path(args.studies))
    names = [s.name for s in studies]
    if args.only:
        unknown = [n for n in args.only if n not in names]
        if unknown:
            raise UserError(f"--only {' '.join(unknown)}: no such study in {args.studies} (studies: {', '.join(names)})")
    plans = []
    for s in studies:
        try:
            plans.append(make_plan(s, runs_root, results_root, args.workers))
        except UserError as e:
            if not args.only or s.name in args.only:
                raise
            # A study not chosen must not block the chosen ones (e.g. a preset file still to be
            # tuned); the page says why it cannot be planned.
            plans.append(Plan(s, runs_root, results_root, [], 0, error=str(e)))
    chosen = [p for p in plans if not args.only or p.study.name in args.only]
    from plots import paper_findings

    ready = tuple(getattr(paper_findings, "KINDS", KINDS))  # kinds the analysis module handles today
    waiting = [p.study for p in chosen if p.study.kind not in ready]
    if args.dry_run:
        print_dry_run(chosen)
        for st in waiting:
            print(f"note: {st.path}: kind {st.kind!r} has no analysis in plots/paper_findings.py yet "
                  f"({', '.join(ready)}); its runs would train, unanalysed")  # fmt: skip
        return 0
    for flag, d in (("--runs", runs_root), ("--results", results_root), ("--docs", docs_root)):
        check_target_dir(d, flag)
    failures: list[str] = []
    for i, plan in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {plan_line(plan)}", flush=True)
        failures += run_study(plan, args, runs_root, results_root)
        st, folder = plan.study, results_root / plan.study.name
        if not plan.complete:
            print(f"  {len(plan.archived)} of {len(plan.specs)} runs finished: the analysis waits for the rest")
            continue
        if st in waiting:
            print(f"  every run finished; kind {st.kind!r} has no analysis in plots/paper_findings.py yet")
            continue
        print(f"  analysing {st.name} (as `bench report {folder}`) ...", flush=True)
        opts = ReportOptions(out=folder / "report", reps=args.reps, seed=0, suite=st.cfg.get("suite"),
                             command=f"bench report {shlex.quote(str(folder))}")  # fmt: skip
        try:
            num, _, section = analyse_study(folder, opts)
        except UserError as e:  # the runs are archived; the next study need not wait for a fix
            print(f"bench: error: study {st.name}: {e}", file=sys.stderr)
            failures.append(f"study {st.name}: analysis failed ({e}); fix it, then `bench paper --only {st.name} "
                            "--no-run`")  # fmt: skip
            continue
        for p, why in num.skipped:
            print(f"bench: warning: {p}: {why}; left out of the report", file=sys.stderr)
        publish(st.name, results_root, docs_root)
        print(f"  {st.name}: {first_sentence(section['answer'])}", flush=True)
    for plan in plans:  # studies analysed by an earlier invocation, not yet on this --docs
        sec = _read(results_root / plan.study.name / "report" / "summary.json").get("study") or {}
        if plan.complete and sec.get("runs") == len(plan.specs) and not (docs_root / plan.study.name).is_dir():
            publish(plan.study.name, results_root, docs_root)
    readme = write_readme(plans, results_root, docs_root)
    done = sum(p.complete for p in plans)
    print(f"wrote {readme} ({done} of {len(plans)} studies with every run finished)")
    for f in failures:
        print(f"  {f}")
    return 1 if failures else 0


__all__ = ["KINDS", "Plan", "Study", "analyse_study", "archive_run", "load_study", "make_plan", "study_specs",
           "thin_lines", "write_readme"]  # fmt: skip
