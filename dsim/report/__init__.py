"""`dsim report`: one self-contained HTML page (and PNGs beside it) from one or more run directories.

`rundir` reads a run directory into a typed model, `metrics` and `messages` turn its logs into series
and binned traffic, `charts` and `compare` draw them with matplotlib, `page` assembles the HTML and
`build` ties them together. Nothing here imports torch or the runtime: a report reads files only.
"""
