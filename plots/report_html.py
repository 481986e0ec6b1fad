"""``index.html``: the report as one self-contained page.

Everything is inside the file: figures as base64 PNG data URIs (SVG when only SVG was written),
the stylesheet inline, episode videos (``<run>/videos/*.mp4``, the last one per agent and game,
up to :data:`MAX_VIDEO_BYTES`) as data URIs too; no script, no font, no link that leaves the
page, so it opens offline, mailed or copied anywhere. Plain string building: every text that
comes from runs, options or the file system goes through :func:`html.escape`.

Sections: the run set and headline table, warnings (mixed pools, runs whose code differed,
runs that did not finish cleanly, the report's notes, figures not drawn), every figure with a
caption on how to read it (:func:`plots.report.figure_caption`), videos, the per-game, compute
and protocol / hardware tables, and the exact commands behind the runs and the report.
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

from plots import report_tables as T
from plots.report import Numbers, figure_caption

MAX_VIDEO_BYTES = 20 * 1024 * 1024  # larger videos are listed, not embedded (the page stays mailable)
SCREEN_DPI = 110  # CSS px per figure inch: plots.figures' figure.dpi, the size its fonts are set for
LONG_CELL = 60  # characters: a longer cell wraps instead of widening its column

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef0f3; color: #1d1f23;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 20px 32px 64px; background: #fff; min-height: 100vh; }
h1 { font-size: 1.55em; line-height: 1.25; margin: 0.3em 0 0.2em; }
h2 { font-size: 1.22em; margin: 2.2em 0 0.6em; padding-bottom: 0.2em; border-bottom: 1px solid #dde1e6; }
h3 { font-size: 1.02em; margin: 1.4em 0 0.4em; }
p { margin: 0.5em 0; }
a { color: #0b57d0; }
.lead { color: #3c4149; margin: 0.2em 0; }
.muted { color: #5f6670; font-size: 0.88em; }
nav { display: flex; flex-wrap: wrap; gap: 0.2em 1.1em; margin: 0.9em 0 0.4em; padding: 0.5em 0.8em;
  background: #f5f6f8; border-radius: 6px; font-size: 0.9em; }
nav a { text-decoration: none; }
.scroll { overflow-x: auto; margin: 0.6em 0 1em; border: 1px solid #dde1e6; border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 0.86em; }
th, td { padding: 5px 9px; text-align: left; vertical-align: top; border-bottom: 1px solid #eceef1;
  white-space: nowrap; }
th { background: #f5f6f8; font-weight: 600; white-space: normal; min-width: 4em; }
td.long { white-space: normal; min-width: 18em; }
tbody tr:last-child td { border-bottom: 0; }
tbody tr:hover td { background: #fafbfc; }
figure { margin: 1em 0 2.2em; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; border: 1px solid #eceef1;
  border-radius: 4px; }
figcaption { margin-top: 0.5em; font-size: 0.9em; color: #3c4149; }
figcaption b { color: #1d1f23; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  font-size: 0.86em; }
pre { background: #f5f6f8; padding: 8px 12px; border-radius: 6px; overflow-x: auto; white-space: pre; }
.banner { background: #fdecea; border-left: 4px solid #c62828; padding: 8px 14px; margin: 1em 0; }
.ok { background: #edf7ee; border-left: 4px solid #2e7d32; padding: 6px 14px; }
ul.warnings li { margin: 0.25em 0; }
ul.warnings li.strong { color: #8a1c1c; }
.videos { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 16px; }
.videos video { display: block; width: 100%; height: auto; background: #000; border-radius: 4px; }
details summary { cursor: pointer; margin: 0.4em 0; }
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def inline(text: str) -> str:
    """Escaped prose with Markdown's inline ``code`` and **bold** (the tables' shared prose)."""
    out = esc(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)


def table(t: T.Table) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in t.header)
    body = "".join(
        "<tr>" + "".join(f'<td class="long">{esc(c)}</td>' if len(c) > LONG_CELL else f"<td>{esc(c)}</td>"
                         for c in row) + "</tr>"
        for row in t.rows
    )  # fmt: skip
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def png_width(path: Path) -> int | None:
    """CSS width of a PNG figure: its size in inches (pixels over the pHYs density matplotlib
    records) at :data:`SCREEN_DPI`, so every figure's text shows at one size; the stylesheet
    shrinks wider ones to the page (max-width: 100%). None when the header does not say."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width = int.from_bytes(head[16:20], "big")
    i = head.find(b"pHYs")
    if i < 0 or len(head) < i + 13 or head[i + 12] != 1:  # unit 1: pixels per metre
        return None
    dpi = int.from_bytes(head[i + 4 : i + 8], "big") * 0.0254
    return round(width / dpi * SCREEN_DPI) if dpi > 0 else None


def _natural(name: str) -> list:
    """Sort key that orders ``eval_900_ep1.mp4`` before ``eval_1000_ep0.mp4``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _common_folder(num: Numbers) -> str:
    try:
        return os.path.commonpath([str(r.path) for r in num.runs])
    except ValueError:  # relative and absolute paths mixed
        return ""


def run_set(num: Numbers) -> str:
    """"ppo, rainbow on breakout, pong" (counts instead of names when the list is long)."""
    labels = ", ".join(num.labels) if len(num.labels) <= 6 else f"{len(num.labels)} agents"
    if num.opts.suite:
        games = f"suite {num.opts.suite} ({len(num.games)} games with runs)"
    else:
        games = ", ".join(num.games) if len(num.games) <= 5 else f"{len(num.games)} games"
    return f"{labels} on {games}"


def videos(num: Numbers) -> tuple[list[tuple[str, str, Path]], list[str]]:
    """The last ``videos/*.mp4`` (by name, numbers compared as numbers) per (agent, game), over its
    runs: [(label, game, file)], and a note per video too large to embed."""
    found: dict[tuple[str, str], list[tuple[list, int, Path]]] = defaultdict(list)
    for i, r in enumerate(num.runs):
        folder = r.path / "videos"
        if not folder.is_dir():
            continue
        files = sorted((p for p in folder.glob("*.mp4") if p.is_file()), key=lambda p: _natural(p.name))
        if files:
            # A later name wins; between runs with the same name, the first run (lowest seed).
            found[(r.label, r.game)].append((_natural(files[-1].name), -i, files[-1]))
    chosen, notes = [], []
    for (lab, game), cands in sorted(found.items()):
        path = max(cands, key=lambda c: (c[0], c[1]))[2]
        size = path.stat().st_size
        if size > MAX_VIDEO_BYTES:
            notes.append(f"{lab} on {game}: {path} is {size / 2**20:.0f} MB, over the "
                         f"{MAX_VIDEO_BYTES / 2**20:.0f} MB embedding limit; open it from the run folder")  # fmt: skip
        else:
            chosen.append((lab, game, path))
    return chosen, notes


def _figure(num: Numbers, stem: Path, out: Path) -> str:
    files = {p.suffix: p for p in num.figures if p.with_suffix("") == stem}
    name = stem.name
    caption = figure_caption(name, num) or "(no caption)"
    others = ", ".join(f"<code>{esc(p.relative_to(out))}</code>" for p in files.values())
    if ".png" in files:
        w = png_width(files[".png"])
        size = f' width="{w}"' if w else ""
        img = f'<img src="{data_uri(files[".png"], "image/png")}"{size} alt="{esc(name)}">'
    elif ".svg" in files:
        img = f'<img src="{data_uri(files[".svg"], "image/svg+xml")}" style="width: 100%" alt="{esc(name)}">'
    else:
        img = '<p class="muted">Not embedded: no PNG or SVG was written (<code>--formats</code>).</p>'
    return (f'<figure id="fig-{esc(name)}">{img}<figcaption><b>{esc(name)}</b>: {esc(caption)} '
            f'<span class="muted">Files: {others}.</span></figcaption></figure>')  # fmt: skip


def _warnings(num: Numbers) -> list[str]:
    H: list[str] = []
    items: list[tuple[str, str]] = []  # (css class, escaped html)
    items += [("strong", f"<b>MIXED</b>: {esc(m)}") for m in num.mixed]
    if num.code_differed:
        items.append(("strong", f"{len(num.code_differed)} run(s) whose code differed from their recorded "
                                "commit (table below)."))  # fmt: skip
    unclean = T.unclean_runs(num)
    if unclean.rows:
        items.append(("", f"{len(unclean.rows)} run(s) that did not finish cleanly or were left out (table "
                          "below)."))  # fmt: skip
    items += [("strong" if n.startswith("WARNING") else "", esc(n)) for n in num.notes]
    items += [("", f"figure {esc(name)} not drawn: {esc(why)}") for name, why in num.figures_skipped.items()]
    if not items:
        return ['<p class="ok">None: every run finished cleanly, from committed code, and the runs pool.</p>']
    H.append('<ul class="warnings">')
    H += [f'<li class="{c}">{text}</li>' if c else f"<li>{text}</li>" for c, text in items]
    H.append("</ul>")
    if num.code_differed:
        H += ["<h3>Runs whose code differed</h3>", table(T.code_differed(num)),
              f'<p class="muted">{inline(T.CODE_DIFFERED_NOTE)}</p>']  # fmt: skip
    if unclean.rows:
        H += ["<h3>Runs that did not finish cleanly</h3>", table(unclean),
              f'<p class="muted">{inline(T.UNCLEAN_NOTE)}</p>']  # fmt: skip
    return H


def _commands(num: Numbers) -> list[str]:
    H = []
    if num.opts.command:
        H += ["<p>This report:</p>", f"<pre>{esc(num.opts.command)}</pre>"]
    rows = [[str(r.path), str(r.config.get("command") or "n/a (not recorded)")] for r in num.runs]
    distinct = Counter(c for _, c in rows)
    H.append(f"<p>The runs ({len(rows)} runs, {len(distinct)} distinct commands, from each run's "
             "<code>config.json</code>):</p>")  # fmt: skip
    body = "".join(f"<tr><td><code>{esc(p)}</code></td><td><code>{esc(c)}</code></td></tr>" for p, c in rows)
    tbl = (f'<div class="scroll"><table><thead><tr><th>run</th><th>command</th></tr></thead><tbody>{body}'
           "</tbody></table></div>")  # fmt: skip
    H.append(tbl if len(rows) <= 20 else f"<details><summary>show all {len(rows)}</summary>{tbl}</details>")
    return H


def _versions(num: Numbers) -> T.Table:
    commits: dict[str, list] = defaultdict(list)
    for r in num.runs:
        commits[str(r.fingerprint.get("git_commit") or "not recorded")].append(r)
    rows = [[c, str(len(rs)), str(rs[0].path)] for c, rs in sorted(commits.items())]
    return T.Table(["git commit", "runs", "e.g."], rows)


def page(num: Numbers, out: Path) -> str:
    """The whole page as one string."""
    title = f"onoff-bench report: {run_set(num)}"
    aggregate = bool(num.aggregates)
    chosen, video_notes = videos(num)
    sections = [("headline", "Headline"), ("warnings", "Warnings"), ("figures", "Figures")]
    sections += [("videos", "Videos")] if chosen or video_notes else []
    sections += [("per-game", "Per game")] if aggregate else []
    sections += [("compute", "Compute"), ("protocol", "Protocol and hardware"), ("commands", "Commands"),
                 ("definitions", "Definitions")]  # fmt: skip

    H = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{esc(title)}</title>",
         f"<style>{CSS}</style>", "</head>", "<body>", "<main>"]  # fmt: skip
    H += [f"<h1>{esc(title)}</h1>", f'<p class="lead">{esc(T.run_counts(num))}</p>']
    folder = _common_folder(num)
    if folder:
        H.append(f'<p class="muted">Run folders under <code>{esc(folder)}</code>; report in '
                 f"<code>{esc(out)}</code>.</p>")  # fmt: skip
    H.append("<nav>" + "".join(f'<a href="#{k}">{esc(v)}</a>' for k, v in sections) + "</nav>")
    if num.mixed:
        H.append('<div class="banner"><b>MIXED</b>: pooled with <code>--allow-mixed</code> although the runs are '
                 "not comparable; see the warnings.</div>")  # fmt: skip

    H.append('<h2 id="headline">Headline</h2>')
    if aggregate:
        H += [f"<h3>{esc(T.aggregate_title(num))}</h3>", table(T.aggregates(num)),
              f'<p class="muted">{esc(T.OPTIMALITY_GAP)} Normalisation (score - lo) / (hi - lo): '
              f"{esc('; '.join(T.normalisation_lines(num)))}.</p>"]  # fmt: skip
        if num.poi:
            H += ["<h3>Probability of improvement</h3>", table(T.improvement(num))]
    else:
        H += ["<h3>Final score per agent and game</h3>", table(T.final_scores(num)),
              '<p class="muted">No cross-game aggregate: no game here has a human or min-max reference scored '
              "by every agent.</p>"]  # fmt: skip

    H += ['<h2 id="warnings">Warnings</h2>', *_warnings(num)]

    H.append('<h2 id="figures">Figures</h2>')
    stems = list(dict.fromkeys(p.with_suffix("") for p in num.figures))
    H += [_figure(num, stem, out) for stem in stems]
    if not stems:
        H.append('<p class="muted">No figures were drawn.</p>')

    if chosen or video_notes:
        H.append('<h2 id="videos">Videos</h2>')
        H.append('<p class="muted">The last episode video of each agent and game.</p>')
        H.append('<div class="videos">')
        for lab, game, path in chosen:
            H.append(f'<figure><video controls preload="metadata" src="{data_uri(path, "video/mp4")}"></video>'
                     f"<figcaption><b>{esc(lab)}</b> on {esc(game)}: <code>{esc(path)}</code></figcaption>"
                     "</figure>")  # fmt: skip
        H.append("</div>")
        H += [f'<p class="muted">{esc(n)}</p>' for n in video_notes]

    if aggregate:
        H += ['<h2 id="per-game">Final score per agent and game</h2>', table(T.final_scores(num))]

    H += ['<h2 id="compute">Compute</h2>', table(T.compute(num)), f'<p class="muted">{esc(T.COMPUTE_NOTE)}</p>']

    H += ['<h2 id="protocol">Protocol and hardware</h2>', table(T.protocols(num)), "<h3>Code versions</h3>",
          table(_versions(num)), "<h3>Normalisation references</h3>", table(T.normalisation(num))]  # fmt: skip
    refs = T.references(num)
    if refs.rows:
        H += ["<h3>Published reference points (drawn on the figures)</h3>", table(refs)]

    H += ['<h2 id="commands">Commands</h2>', *_commands(num)]
    definitions = T.definitions(num).removeprefix("**Definitions.** ")
    H += ['<h2 id="definitions">Definitions</h2>', f"<p>{inline(definitions)}</p>"]
    H += ["</main>", "</body>", "</html>", ""]
    return "\n".join(H)


def render(num: Numbers, out: Path) -> str:
    return page(num, out)
