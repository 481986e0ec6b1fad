"""``summary.md``: the report as Markdown (tables from :mod:`plots.report_tables`, figures
linked from ``figures/``)."""

from __future__ import annotations

from pathlib import Path

from plots import report_tables as T
from plots.report import Numbers


def _md_table(table: T.Table) -> list[str]:
    header, rows = table.header, table.rows
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return out + [""]


def summary_md(num: Numbers, out: Path) -> str:
    o = num.opts
    L = ["# onoff-bench report", ""]
    if num.mixed:
        L += ["> **MIXED**: pooled with `--allow-mixed` although the runs are not comparable:", ">"]
        L += [f"> - {m}" for m in num.mixed] + [""]
    L += [T.run_counts(num), ""]
    if o.command:
        L += [f"Command: `{o.command}`", ""]
    L += [T.definitions(num), ""]

    L += ["## Final score per agent and game", ""]
    L += _md_table(T.final_scores(num))

    if num.aggregates:
        L += [f"## {T.aggregate_title(num)}", ""]
        L += _md_table(T.aggregates(num))
        L += [T.OPTIMALITY_GAP, ""]
        L += ["Normalisation (score - lo) / (hi - lo) per game:", ""]
        L += [f"- {line}" for line in T.normalisation_lines(num)]
        L.append("")
    if num.poi:
        L += ["## Probability of improvement", ""]
        L += _md_table(T.improvement(num))

    L += ["## Compute", ""]
    L += _md_table(T.compute(num))
    L += [T.COMPUTE_NOTE, ""]

    L += ["## Protocol and hardware", ""]
    L += _md_table(T.protocols(num))

    L += ["## Normalisation references", ""]
    L += _md_table(T.normalisation(num))

    refs = T.references(num)
    if refs.rows:
        L += ["## Published reference points (drawn on the figures)", ""]
        L += _md_table(refs)

    L += ["## Runs that did not finish cleanly", ""]
    unclean = T.unclean_runs(num)
    if unclean.rows:
        L += _md_table(unclean)
        L += [T.UNCLEAN_NOTE, ""]
    else:
        L += ["None: every run has its `done` marker.", ""]
    if num.code_differed:
        L += ["## Runs whose code differed", ""]
        L += _md_table(T.code_differed(num))
        L += [T.CODE_DIFFERED_NOTE, ""]
    if num.notes:
        L += ["## Notes", ""] + [f"- {n}" for n in num.notes] + [""]

    L += ["## Figures", ""]
    stems = list(dict.fromkeys(p.with_suffix("") for p in num.figures))
    for stem in stems:
        rel = stem.relative_to(out)
        links = ", ".join(
            f"[{p.suffix[1:]}]({p.relative_to(out)})" for p in num.figures if p.with_suffix("") == stem
        )
        L += [f"- {stem.name}: {links}", ""]
        if any(p.suffix == ".png" and p.with_suffix("") == stem for p in num.figures):
            L += [f"  ![{stem.name}]({rel}.png)", ""]
    for name, why in num.figures_skipped.items():
        L += [f"- {name}: not drawn ({why})"]
    L += [""]
    return "\n".join(L)


def render(num: Numbers, out: Path) -> str:
    return summary_md(num, out)
