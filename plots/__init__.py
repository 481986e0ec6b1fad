"""Run folders in, paper figures and tables out (STYLE.md principle 11).

* :mod:`plots.load`: discover run folders, read them into :class:`plots.load.Run` records and one
  tidy table; ragged, failed and crashed runs are kept and reported, never dropped;
* :mod:`plots.stats`: pure functions: episode-window scores, step-wise resampling onto common
  grids, IQM / median / mean / optimality gap with stratified-bootstrap CIs (rliable, seeded),
  performance profiles, probability of improvement;
* :mod:`plots.normalize`: Atari-57 human-normalisation and stated min-max references;
* :mod:`plots.references`: published scores drawn on the figures when the game matches;
* :mod:`plots.figures`: one paper style, one colour per agent, each figure a small function
  drawing precomputed numbers on an ``ax``;
* :mod:`plots.report`: ties them together for ``bench report`` (figures/); its writers
  :mod:`plots.report_md` (summary.md), :mod:`plots.report_json` (summary.json) and
  :mod:`plots.report_html` (index.html, one self-contained page) lay out the tables of
  :mod:`plots.report_tables`.
"""
