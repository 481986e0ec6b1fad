"""plots.report_html: ``index.html`` from small run folders in the harness's format (the
fixtures of tests/test_report.py). The page is self-contained (figures and videos as data URIs,
no script, no request leaving the file), captions every figure, carries the headline numbers,
the warnings and the commands, and renders in a headless Chromium when one is installed."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from plots import report_tables as T
from plots.report import build_report, figure_caption, fmt
from tests.test_report import EXPECTED_FIGURES, opts, synthetic_set

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
URL_ATTRS = {"src", "href", "poster", "action", "srcset", "data", "formaction", "background", "cite"}


class Page(HTMLParser):
    """Every start tag with its attributes, the text, and whether the elements nest properly."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)

    def of(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag]


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    p.close()
    assert not p.errors and not p.stack, (p.errors, p.stack)
    return p


def report(tmp_path: Path):
    """Two games, three agents x 3 seeds (one crashed), a single-seed agent; one run with
    uncommitted changes, one with a code.diff, two with videos (one too large to embed)."""
    root = synthetic_set(tmp_path / "runs", games=("puffer_breakout", "breakout"), single_seed_agents=("btr",))
    dirty = root / "ppo" / "breakout" / "seed1"
    cfg = json.loads((dirty / "config.json").read_text())
    cfg["fingerprint"]["git_commit"] = "abc123-dirty"
    (dirty / "config.json").write_text(json.dumps(cfg))
    (root / "rainbow" / "breakout" / "seed2" / "code.diff").write_text("--- a/agents/rainbow.py\n+++ b/...\n")
    vids = root / "ppo" / "puffer_breakout" / "seed2" / "videos"
    vids.mkdir()
    (vids / "eval_900_ep1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 early")
    (vids / "eval_1000_ep0.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 last one")
    big = root / "random" / "breakout" / "seed1" / "videos"
    big.mkdir()
    with open(big / "eval_4000_ep0.mp4", "wb") as f:
        f.truncate(21 * 2**20)  # sparse: over the embedding limit without writing 21 MB
    out = tmp_path / "report"
    num, files = build_report([root], opts(out))
    return root, out, num, files


def test_index_html_is_self_contained_with_every_figure_caption_and_number(tmp_path):
    root, out, num, files = report(tmp_path)
    index = out / "index.html"
    assert index in files and index.exists()
    text = index.read_text(encoding="utf-8")
    page = parse(text)

    # Every figure, embedded as the very PNG bytes written to figures/, with its caption.
    imgs = {a["alt"]: a["src"] for a in page.of("img")}
    assert set(imgs) == EXPECTED_FIGURES
    for name, src in imgs.items():
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):]) == (out / "figures" / f"{name}.png").read_bytes()
        caption = figure_caption(name, num)
        assert caption and html.escape(caption) in text, name
    assert "breakout" in figure_caption("curves_breakout", num)

    # No request leaves the page: no URL in any URL attribute, no script, stylesheet link or import.
    for tag, attrs in page.tags:
        for k, v in attrs.items():
            if k in URL_ATTRS:
                assert not re.match(r"\s*(https?:|//|ftp:)", v, re.I), (tag, k, v[:80])
                assert v.startswith(("data:", "#")), (tag, k, v[:80])
    assert not page.of("script") and not page.of("link") and not page.of("iframe")
    css = text[text.index("<style>"):text.index("</style>")]
    assert "@import" not in css and not re.search(r"url\(\s*['\"]?(https?:)?//", css)

    # The headline numbers: the aggregate and per-game tables cell by cell, and one number
    # straight from summary.json.
    for t in (T.aggregates(num), T.final_scores(num), T.compute(num)):
        for row in t.rows:
            for cell in row:
                assert html.escape(cell) in text, cell
    doc = json.loads((out / "summary.json").read_text())
    assert fmt(doc["aggregates"]["ppo"]["iqm"]["point"]) in text
    assert "<h1>onoff-bench report: btr, ppo, rainbow, random on breakout, puffer_breakout</h1>" in text

    # Warnings: ragged runs, the crashed ones, and the two runs whose code differed.
    body = " ".join(page.text)
    assert "ragged runs" in body and "incomplete" in body
    assert "abc123-dirty" in body and "code.diff in the run folder" in body
    md = (out / "summary.md").read_text()
    assert "## Runs whose code differed" in md and "abc123-dirty" in md and "code.diff in the run folder" in md
    assert [p.name for p, _ in num.code_differed] == ["seed1", "seed2"]

    # The exact commands of every run and of the report.
    for r in num.runs:
        assert html.escape(r.config["command"]) in text

    # Videos: the last one by step number, embedded; the oversized one only named.
    (video,) = page.of("video")
    assert "controls" in video
    assert base64.b64decode(video["src"].split(",", 1)[1]) == b"\x00\x00\x00\x18ftypmp42 last one"
    assert "over the 20 MB embedding limit" in body and "eval_4000_ep0.mp4" in body

    # Laptop width: a max-width container, horizontally scrolling tables, full-width images.
    # (figures at their designed size, shrunk to the page when wider: max-width: 100%).
    assert "max-width: 1120px" in css and "overflow-x: auto" in css and "max-width: 100%" in css
    widths = {a["alt"]: int(a["width"]) for a in page.of("img")}
    assert widths["performance_profile"] < 600 < widths["compute"]  # 200 dpi PNGs at 110 px per inch
    assert text.count('<div class="scroll"><table>') == text.count("<table>")


def test_a_report_without_aggregates_puts_the_per_game_table_first(tmp_path):
    # A gym game has no reference score: no aggregate, so the per-game table is the headline.
    root = synthetic_set(tmp_path / "runs", games=("gym:Scripted-v0",), seeds=(1,), agents=("ppo",))
    out = tmp_path / "report"
    num, _ = build_report([root], opts(out, formats=("pdf",)))
    assert not num.aggregates
    text = (out / "index.html").read_text(encoding="utf-8")
    page = parse(text)
    assert not page.of("img")  # no PNG written: named, not embedded
    assert "Not embedded" in text and "figures/compute.pdf" in text
    head = text.index('id="headline"')
    assert text.index("Final score per agent and game", head) < text.index('id="warnings"')
    assert html.escape(T.final_scores(num).rows[0][4]) in text


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_index_html_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is absent (apt-get install chromium): the page is not rendered")
    _, out, _, _ = report(tmp_path)
    shot = tmp_path / "page.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1366,2400",
           (out / "index.html").resolve().as_uri()]  # fmt: skip
    subprocess.run(cmd, check=False, timeout=180, capture_output=True)
    assert shot.exists() and shot.stat().st_size > 20_000
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2400, 1366)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # not a blank page
    if os.environ.get("REPORT_HTML_SCREENSHOT"):
        shutil.copy(shot, os.environ["REPORT_HTML_SCREENSHOT"])
