"""bench paper: study files, the dry-run plan, a full run into results/ and docs/, resume after a
kill, bench report on an archive reproducing the study's numbers, bad study files.

The runs are the `random` agent on CartPole for a second or two: what is tested is the plumbing
(expansion, archive, resume, analysis, page), not learning."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from bench.cli import main as cli
from bench.paper import LEARNER_ROWS, archive_run, load_study, study_specs, thin_lines

ROOT = Path(__file__).resolve().parent.parent
GAME_DIR = "gym_CartPole-v1"

TINY = """\
name = "tiny"
title = "Tiny arms"
question = "Does a random agent with 4 envs score like one with 2?"
kind = "arms"
change = "Nothing: the agent is random."
agents = ["random"]
games = ["gym:CartPole-v1"]
seeds = 2
time = "2s"

[options.random]
num_envs = 2

[arms.random-4env]
agent = "random"
num_envs = 4
"""

RESUME = """\
name = "resume"
question = "Is resuming safe?"
kind = "arms"
order = 2
games = ["gym:CartPole-v1"]
seeds = 2
steps = "3k"

[arms.r2]
agent = "random"
num_envs = 2
"""


def paper(root: Path, *extra: str) -> tuple[int, str, str]:
    """``bench paper`` on the studies in root/studies, writing under root; (code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["paper", "--studies", str(root / "studies"), "--runs", str(root / "runs"), "--results",
            str(root / "results"), "--docs", str(root / "docs"), "--reps", "50", *extra]  # fmt: skip
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(argv)
    return code, out.getvalue(), err.getvalue()


def studies(root: Path, **files: str) -> Path:
    d = root / "studies"
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / f"{name}.toml").write_text(text)
    return d


def done_archives(results: Path) -> list[str]:
    return sorted(p.parent.relative_to(results).as_posix() for p in results.rglob("done"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One full `bench paper` of the tiny study (4 runs of 2 s), shared by the tests that read it."""
    root = tmp_path_factory.mktemp("paper")
    studies(root, tiny=TINY)
    code, out, err = paper(root)
    assert code == 0, out + err
    return root, out


# Pure pieces -------------------------------------------------------------------------------


def test_thin_lines_keeps_header_first_last_and_even_rows():
    lines = ["a,b"] + [f"{i},{i}" for i in range(2500)]
    kept = thin_lines(lines, 1000)
    assert len(kept) == 1001 and kept[0] == "a,b" and kept[1] == "0,0" and kept[-1] == "2499,2499"
    idx = [int(ln.split(",")[0]) for ln in kept[1:]]
    assert idx == sorted(set(idx)) and max(b - a for a, b in zip(idx, idx[1:])) <= 3
    assert thin_lines(lines[:500], 1000) == lines[:500]


def test_archive_keeps_small_files_thins_learner_and_reads_as_a_finished_run(tmp_path):
    from bench.results import RunDir
    from plots.load import load_run

    src = tmp_path / "run"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"run": {"agent": "random", "game": "gym:CartPole-v1", "seed": 1},
                                                 "agent": {}}))  # fmt: skip
    (src / "metrics.csv").write_text("wall_s,env_steps,frames,episodes,grad_steps,grad_samples,reuse_ratio,sps,"
                                     "episode_return,episode_length\n1,10,10,1,0,0,0,10,5,5\n")  # fmt: skip
    (src / "learner.csv").write_text("loss\n" + "".join(f"{i}\n" for i in range(3000)))
    (src / "checkpoint.pt").write_bytes(b"x" * 100)
    (src / "done").write_text('{"status": "ok"}\n')
    dst = tmp_path / "results" / "run"
    (dst).mkdir(parents=True)
    (dst / "config.json").write_text("{}")  # an archive cut short by a kill: no done, copied again
    archive_run(src, dst)
    names = sorted(p.name for p in dst.iterdir())
    assert names == ["archive.json", "config.json", "done", "learner.csv.gz", "metrics.csv.gz"]
    assert gzip.decompress((dst / "metrics.csv.gz").read_bytes()) == (src / "metrics.csv").read_bytes()
    learner = gzip.decompress((dst / "learner.csv.gz").read_bytes()).decode().splitlines()
    assert len(learner) == LEARNER_ROWS + 1 and learner[1] == "0" and learner[-1] == "2999"
    note = json.loads((dst / "archive.json").read_text())
    assert note["learner_csv"]["rows"] == 3000 and note["learner_csv"]["kept"] == LEARNER_ROWS
    assert "checkpoint.pt" in note["left_out"]
    assert RunDir(dst).status == "done" and load_run(dst).status == "ok"


# The command -------------------------------------------------------------------------------


def test_help_lists_the_options(capsys):
    assert cli(["paper", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--only", "--dry-run", "--no-run", "--studies", "--runs", "--results", "--docs", "--workers", "--reps"):
        assert flag in text


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    studies(tmp_path, tiny=TINY, resume=RESUME)
    code, out, err = paper(tmp_path, "--dry-run", "--workers", "1")
    assert code == 0, err
    # tiny: 4 runs of 2 s, one at a time, each + 15 s start-up; resume: a step budget
    assert "study tiny: 4 runs, 0 finished, 4 to run, ~68 s (1 at a time)" in out
    assert "study resume: 2 runs, 0 finished, 2 to run, time unknown (step budget)" in out
    assert re.search(r"^part 1: 2 studies, 6 runs, 0 finished, 6 to run, ~68 s \+ 2 step-budgeted", out, re.M), out
    assert not any((tmp_path / d).exists() for d in ("runs", "results", "docs"))


def test_full_run_archives_runs_and_writes_the_page(tiny):
    root, out = tiny
    assert "study tiny: 4 runs, 0 finished, 4 to run" in out
    results, docs = root / "results", root / "docs"
    expected = sorted(f"{lab}/{GAME_DIR}/seed{k}" for lab in ("random", "random-4env") for k in (1, 2))
    assert done_archives(results / "tiny") == expected
    for rel in expected:
        arch, run = results / "tiny" / rel, root / "runs" / "tiny" / rel
        assert {"config.json", "metrics.csv.gz", "eval.csv", "compute.json", "done", "archive.json"} <= {
            p.name for p in arch.iterdir()}  # fmt: skip
        assert not (arch / "checkpoint.pt").exists() and (run / "checkpoint.pt").exists()
        learner = arch / "learner.csv.gz"
        assert not learner.exists() or len(gzip.decompress(learner.read_bytes()).splitlines()) <= LEARNER_ROWS + 1
        assert gzip.decompress((arch / "metrics.csv.gz").read_bytes()) == (run / "metrics.csv").read_bytes()
    assert (results / "tiny" / "study.toml").read_text() == TINY
    summary = json.loads((results / "tiny" / "report" / "summary.json").read_text())
    study = summary["study"]
    assert {"name", "title", "question", "kind", "numbers", "answer", "change", "command"} <= set(study)
    assert study["command"] == "bench paper --only tiny" and study["numbers"] and study["answer"]
    assert (docs / "tiny" / "summary.json").read_bytes() == (results / "tiny" / "report" / "summary.json").read_bytes()
    for f in study["figures"]:
        assert (docs / "tiny" / Path(f).name).is_file()
    page = (docs / "README.md").read_text()
    assert "### Tiny arms" in page and "Does a random agent with 4 envs" in page and "**Answer.**" in page
    assert "`bench paper --only tiny`" in page and "What would change it:" in page
    links = re.findall(r"\]\(([^)#]+)\)", page)
    assert any(link.endswith(".png") for link in links)
    for link in links:
        assert (docs / link).is_file(), link


def test_bench_report_on_the_archive_reproduces_the_study_numbers(tiny):
    root, _ = tiny
    folder = root / "results" / "tiny"
    before = json.loads((folder / "report" / "summary.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli(["report", str(folder), "--reps", "50"]) == 0
    after = json.loads((folder / "report" / "summary.json").read_text())
    assert after["study"] == before["study"]
    for doc in (before, after):
        doc["settings"].pop("command")
    assert after == before


def test_killed_then_rerun_skips_finished_runs_and_duplicates_nothing(tmp_path):
    studies(tmp_path, resume=RESUME)
    code, out, err = paper(tmp_path)
    assert code == 0, out + err
    runs, arch = tmp_path / "runs" / "resume" / "r2" / GAME_DIR, tmp_path / "results" / "resume" / "r2" / GAME_DIR
    kept = {p: p.stat().st_mtime_ns for p in (runs / "seed1" / "metrics.csv", arch / "seed1" / "metrics.csv.gz")}
    # A kill mid-way: seed 2 stopped before its end (no done marker, a checkpoint) and its archive
    # cut short mid-copy (config.json, no done).
    (runs / "seed2" / "done").unlink()
    shutil.rmtree(arch / "seed2")
    (arch / "seed2").mkdir()
    (arch / "seed2" / "config.json").write_text((runs / "seed2" / "config.json").read_text())
    code, out, err = paper(tmp_path, "--dry-run")
    assert "study resume: 2 runs, 1 finished, 1 to run" in out
    code, out, err = paper(tmp_path)
    assert code == 0, out + err
    assert "study resume: 2 runs, 1 finished, 1 to run" in out and "seed 1" not in out
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # seed 1 neither rerun nor archived again
    assert done_archives(tmp_path / "results" / "resume") == [f"r2/{GAME_DIR}/seed1", f"r2/{GAME_DIR}/seed2"]
    assert "not yet run" not in (tmp_path / "docs" / "README.md").read_text()


@pytest.mark.parametrize(
    "text, message",
    [
        ("bogus = 1\n" + TINY, "unknown key(s) bogus"),
        (TINY + "bogus = 1\n", "[arms.random-4env] bogus = 1: random has no option"),
        (TINY.replace('question = "Does a random agent with 4 envs score like one with 2?"\n', ""),
         "missing 'question'"),
        (TINY.replace('kind = "arms"', 'kind = "nosuch"'), "kind = 'nosuch' is not a known analysis"),
        (TINY.replace('agent = "random"', 'agent = "nosuch"'), "[arms.random-4env] agent = 'nosuch': unknown agent"),
        (TINY.replace("[arms.random-4env]", "[arms.random]"), "label 'random' is also the label of the random runs"),
        (TINY.replace("num_envs = 4", "num_envz = 4"), "[arms.random-4env] num_envz = 4: random has no option"),
        (TINY.replace('name = "tiny"', 'name = "a/b"'), "name = 'a/b' must be letters"),
        (TINY.replace("[arms.random-4env]", "[arms.report]"), "[arms.report]: the label must be"),
        (TINY.replace('time = "2s"', ""), "give a budget"),
        ("name = \n", "malformed TOML"),
        ('diagnostics = ["kl"]\n' + TINY, 'diagnostics is read only by kind = "variants"'),
        ('diagnostics = []\n' + TINY.replace('kind = "arms"', 'kind = "variants"'),
         "diagnostics = [] must be a non-empty list"),
    ],
)
def test_bad_study_file_is_one_line_and_exit_2(tmp_path, text, message):
    studies(tmp_path, bad=text)
    code, out, err = paper(tmp_path, "--dry-run")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert str(tmp_path / "studies" / "bad.toml") in err


def test_bad_command_lines_are_one_line(tmp_path):
    studies(tmp_path, tiny=TINY, other=TINY.replace('"tiny"', '"other"'))
    code, _, err = paper(tmp_path, "--dry-run", "--only", "nosuch")
    assert code == 2 and "--only nosuch: no such study" in err and "studies: other, tiny" in err
    (tmp_path / "studies" / "other.toml").write_text(TINY)
    code, _, err = paper(tmp_path, "--dry-run")
    assert code == 2 and "name = 'tiny' is taken by" in err and len(err.strip().splitlines()) == 1
    code, _, err = paper(tmp_path / "nowhere", "--dry-run")
    assert code == 2 and "no such folder" in err


@pytest.mark.parametrize("path", sorted((ROOT / "experiments" / "paper").glob("*.toml")), ids=lambda p: p.name)
def test_paper_study_files_expand(path, tmp_path):
    specs = study_specs(load_study(path), tmp_path)
    assert specs and len({s.out for s in specs}) == len(specs)


def test_cpu_id_separates_machines_that_share_a_name(tmp_path):
    """Two Xeons with one marketing name but different family/model ids do not pool, and a study
    whose finished runs came from the other one refuses to resume here (one line, exit 2)."""
    from bench.fingerprint import cpu_id, fingerprint
    from bench.paper import hardware_text
    from plots.load import hardware_key

    a = {"cpu": "Intel(R) Xeon(R) Processor", "cpu_id": "family 6 model 143", "cores": 2, "cores_allowed": 1}
    b = {**a, "cpu_id": "family 6 model 167"}
    old = {k: v for k, v in a.items() if k != "cpu_id"}  # recorded before the id was
    assert hardware_key(a) != hardware_key(b)
    assert hardware_key(old) == "Intel(R) Xeon(R) Processor x1 | gpu=None"  # old archives keep their key
    assert "family 6 model 167" in hardware_text([{**b, "cpu_isa": "AVX512"}]) and "AVX512" in hardware_text(
        [b | {"cpu_isa": "AVX512"}]
    )
    assert fingerprint()["cpu_id"] == cpu_id()
    if cpu_id() is None:
        pytest.skip("no family/model in /proc/cpuinfo here")
    studies(tmp_path, resume=RESUME)
    code, out, err = paper(tmp_path, "--workers", "1")
    assert code == 0, out + err
    arch = tmp_path / "results" / "resume" / "r2" / GAME_DIR / "seed2"
    shutil.rmtree(arch)
    shutil.rmtree(tmp_path / "runs" / "resume" / "r2" / GAME_DIR / "seed2")
    cfg_path = tmp_path / "results" / "resume" / "r2" / GAME_DIR / "seed1" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["fingerprint"]["cpu_id"] = "family 99 model 1"
    cfg_path.write_text(json.dumps(cfg))
    code, out, err = paper(tmp_path, "--workers", "1")
    assert code == 2 and "family 99 model 1" in err and len(err.strip().splitlines()) == 1, out + err
