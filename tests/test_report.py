"""`dsim report` on real runs made by `dsim launch`: the page, its PNGs, the comparison, bad input,
older runs, and the page opened in a real headless Chromium (skipped where none is installed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, dsim_script, node_events, read_csv, run_dsim, summary
from dsim.report.browser import find_chromium
from dsim.report.messages import deliveries, read_messages

# The module's runs are made once, inside the first test's time limit: three launches on a loaded machine.
pytestmark = pytest.mark.timeout(900)

TINY_DM = ["--set", "dm.iterations=100", "--set", "dm.seeds=5", "--set", "dm.eval_epochs=5",
           "--set", "dm.eval_models=1", "--set", "dm.width=16", "--set", "dm.batch_real=16",
           "--set", "dm.mean_batch=16"]
RUNS = {
    "collabdm": ["--nodes", "3", "--topology", "star", "--algorithm", "collabdm", *TINY_DM],
    "localdm": ["--nodes", "3", "--topology", "star", "--algorithm", "localdm", *TINY_DM],
    "fedavg": ["--nodes", "3", "--topology", "star", "--algorithm", "fedavg", "--set", "rounds=3",
               "--set", "fedavg.width=16", "--set", "fedavg.local_steps=5"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Three real runs (digits, tiny settings) under one parent folder, made once for the module."""
    parent = tmp_path_factory.mktemp("runs")
    for name, args in RUNS.items():
        proc = run_dsim("launch", *args, "--out", str(parent / name), "--quiet", timeout=300)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
    return parent


def report(*args: str) -> tuple[int, str, str]:
    proc = run_dsim("report", *args, timeout=180)
    return proc.returncode, proc.stdout, proc.stderr


def images_in(page: str) -> list[str]:
    return re.findall(r'<img class="chart" alt="([^"]+)" src="data:image/png;base64,', page)


def test_one_run_page_and_pngs(runs):
    run = runs / "collabdm"
    rc, out, err = report(str(run))
    assert rc == 0, err
    page = (run / "report.html").read_text()
    assert "report.html" in out
    # Self-contained: no resource is fetched from anywhere (links to the PNGs beside it are relative).
    assert not re.search(r'(src|href)="(https?:)?//', page)
    charts = images_in(page)
    for name in ("bandwidth", "kinds", "metrics", "labels", "synthetic"):
        assert name in charts
        assert (run / f"report-{name}.png").stat().st_size > 1000
    # The table shows the counters of bandwidth.csv and each node's labels from its share event.
    s = summary(run)
    assert s["status"] == "ok" and ">ok<" in page
    share = next(e for e in node_events(run, 1) if e["event"] == "share")
    assert share["train"] == sum(share["labels"].values()) > 0
    row = re.search(r"<tr><td class=\"num\" data-v=\"1\">1</td><td class=\"num\" data-v=\"(\d+)\">", page.split(
        'id="labels"')[1])
    assert row is not None and int(row.group(1)) == share["train"]
    assert "distill loss" in page and "server_refine loss" in page
    settings = page.split("<h3>Settings away from the defaults</h3>")[1].split("</table>")[0]
    assert "<td>dm.iterations</td><td class=\"num\" data-v=\"100\">100</td><td class=\"num\" data-v=\"200\">" \
        in settings and "<td>out</td>" not in settings
    # The message log: one arrow per message, and every message of bandwidth.csv is in it.
    assert "timeline" in charts and "matrix" in charts
    sent = sum(int(r["msgs_sent"]) for r in read_csv(run / "bandwidth.csv"))
    assert f'<tr><th>sent events</th><td class="num" data-v="{sent}">' in page
    assert "<summary>every message" in page and "One line per message" in page


def test_share_event_counts_every_train_sample(runs):
    """The share events of a run add up to the train samples the partition handed out."""
    run = runs / "fedavg"
    shares = [next(e for e in node_events(run, r) if e["event"] == "share") for r in range(4)]
    assert shares[0]["train"] == 0 and shares[0]["labels"] == {}  # the server holds the test set
    assert all(s["train"] == sum(s["labels"].values()) > 0 for s in shares[1:])
    assert sum(s["train"] + s["val"] for s in shares[1:]) == 1438  # digits' train split, all assigned


def test_comparison_of_three_runs(runs, tmp_path):
    out = tmp_path / "cmp" / "three.html"
    rc, _, err = report(*(str(runs / n) for n in RUNS), "--out", str(out))
    assert rc == 0, err
    page = out.read_text()
    head = page.split('id="compare"')[1].split("</table>")[0]
    for name in RUNS:
        assert f'href="#run-{name}"' in head
    assert "<th>algorithm</th>" in head  # the one config key that differs ... and the tables that come with it
    assert "<th>accuracy_mean</th>" in head and "<th>bytes sent / node</th>" in head
    assert "compare-metrics" in images_in(page)
    assert (out.parent / "three-compare-metrics.png").is_file()
    assert (out.parent / "three-fedavg-metrics.png").is_file()  # each run's own charts, prefixed


def test_parent_folder_stands_for_its_runs(runs):
    rc, _, err = report(str(runs))
    assert rc == 0, err
    page = (runs / "report.html").read_text()
    assert f"dsim report: {len(RUNS)} runs" in page


def test_large_run_is_summarised(tmp_path):
    """60 gossip nodes: traffic per node over time bins instead of 2,000 arrows, and all of it read."""
    run = tmp_path / "gossip"
    proc = run_dsim("launch", "--nodes", "60", "--topology", "regular", "--algorithm", "gossip", "--set", "rounds=5",
                    "--nodes-per-process", "20", "--out", str(run), "--quiet", timeout=180)
    assert proc.returncode == 0, proc.stderr
    rc, _, err = report(str(run))
    assert rc == 0, err
    page = (run / "report.html").read_text()
    assert "Too many nodes or messages to draw one by one" in page
    assert {"bandwidth", "kinds", "timeline", "matrix", "metrics"} <= set(images_in(page))
    sent = sum(int(r["msgs_sent"]) for r in read_csv(run / "bandwidth.csv"))
    assert sent > 60 * 4 * 5 and f'<tr><th>sent events</th><td class="num" data-v="{sent}">' in page
    assert "<summary>every message" not in page
    assert "this program uses no data" in page.split('id="labels"')[1]


def test_older_run_without_share_events_or_message_log(runs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(runs / "fedavg", old, ignore=shutil.ignore_patterns("report*", "messages"))
    for log in (old / "nodes").glob("*.jsonl"):
        lines = [line for line in log.read_text().splitlines() if json.loads(line)["event"] != "share"]
        log.write_text("\n".join(lines) + "\n")
    rc, _, err = report(str(old))
    assert rc == 0, err
    page = (old / "report.html").read_text()
    assert "not recorded" in page.split('id="labels"')[1]
    assert "no message log in this run" in page
    assert "no synthetic.npz" in page  # fedavg writes none, and says so without calling it a failure


@pytest.mark.parametrize("case", ["missing", "not-a-run", "several-without-out", "not-html"])
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, case):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    args = {"missing": [str(tmp_path / "nope")], "not-a-run": [str(empty)],
            "several-without-out": [str(runs / "collabdm"), str(runs / "fedavg")],
            "not-html": [str(runs / "fedavg"), "--out", str(tmp_path / "r.txt")]}[case]
    rc, out, err = report(*args)
    assert rc == 2
    assert err.startswith("dsim: error: ") and len(err.strip().splitlines()) == 1, err


def test_deliveries_pair_sends_with_arrivals_past_a_loss(tmp_path):
    """FIFO pairing per link: a lost message is taken out, so the next arrival is the next send."""
    folder = tmp_path / "messages"
    folder.mkdir()
    (folder / "w0.0.csv").write_text("t,node,event,src,dst,kind,bytes\n"
                                     "1.0,1,sent,1,2,x,10\n2.0,1,sent,1,2,x,10\n3.0,1,sent,1,2,x,10\n"
                                     "2.1,1,lost,1,2,x,10\n")
    (folder / "w0.1.csv").write_text("t,node,event,src,dst,kind,bytes\n1.5,2,recv,1,2,x,10\n3.5,2,recv,1,2,x,10\n")
    d = deliveries(read_messages(tmp_path))
    assert d.t_sent.tolist() == [1.0, 2.0, 3.0]
    assert d.t_recv[0] == 1.5 and np.isnan(d.t_recv[1]) and d.t_recv[2] == 3.5


# ------------------------------------------------------------------ in a real browser


def _browser() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install 'dsim[test]')")
    found = find_chromium()
    if found is None:
        pytest.skip("no Chromium binary on PATH (Debian/Ubuntu: apt-get install chromium)")
    return found


def _not_blank(png: Path) -> None:
    from matplotlib.image import imread

    pixels = imread(png)[..., :3]
    assert pixels.shape[0] > 900 and pixels.shape[1] >= 1200
    coloured = (np.abs(pixels - pixels[..., :1]).max(axis=-1) > 0.1).mean()  # not grey: chart colours
    assert coloured > 0.01, f"{png}: {coloured:.4f} of the pixels are coloured"


@pytest.mark.parametrize("which", ["one", "three"])
def test_report_renders_in_chromium(runs, tmp_path, which):
    from dsim.report.browser import render

    chromium = _browser()
    if which == "one":
        page = runs / "collabdm" / "report.html"
        rc, _, err = report(str(runs / "collabdm"), "--out", str(page))
    else:
        page = tmp_path / "three.html"
        rc, _, err = report(*(str(runs / n) for n in RUNS), "--out", str(page))
    assert rc == 0, err
    shot = tmp_path / f"{which}.png"
    seen = render(page, shot, chromium, open_details=True)
    assert seen.errors == []
    assert seen.title.startswith("dsim report")
    expected = images_in(page.read_text())
    assert [c["alt"] for c in seen.charts] == expected and len(expected) >= 5
    for chart in seen.charts:  # every chart decoded and laid out at a readable size
        assert chart["natural_width"] > 300 and chart["width"] > 300 and chart["height"] > 100, chart
    _not_blank(shot)


def test_failed_run_shows_who_failed_and_why(tmp_path):
    run = tmp_path / "failed"
    proc = subprocess.run([dsim_script(), "launch", "--nodes", "4", "--topology", "ring", "--algorithm",
                           "testprogs.failing", "--out", str(run), "--quiet"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert proc.returncode == 1, proc.stderr
    rc, _, err = report(str(run))
    assert rc == 0, err
    page = (run / "report.html").read_text()
    assert '<span class="bad">failed</span>' in page
    overview = page.split('id="overview"')[1].split("</section>")[0]
    assert "<h3>Failures</h3>" in overview and "<h3>Node errors</h3>" in overview
    assert "node 1 gives up on purpose" in overview
    assert "bandwidth" in images_in(page)  # what the run counted before it failed is still shown


def test_sweep_in_grid_order_with_mean_over_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_dsim("launch", "--algorithm", "gossip", "--nodes", "4", "--topology", "ring", "--sweep",
                    "rounds=10,2", "--sweep", "seed=0,1", "--out", str(sweep), "--quiet", timeout=240)
    assert proc.returncode == 0, proc.stderr
    rc, _, err = report(str(sweep))
    assert rc == 0, err
    page = (sweep / "report.html").read_text()
    names = re.findall(r'<a href="#run-[^"]+">([^<]+)</a>', page.split('id="compare"')[1].split("</table>")[0])
    assert names == [row["name"] for row in read_csv(sweep / "sweep.csv")]  # rounds=10 first, as swept
    over_seeds = page.split("<h3>Over seeds</h3>")[1].split("</table>")[0]
    assert "<th>rounds</th><th>runs</th>" in over_seeds and "mean_error (mean ± std)" in over_seeds
    assert over_seeds.count("<tr>") == 3  # the header and one row per rounds value
