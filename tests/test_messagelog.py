"""The message log (messages/<process>.csv): one row per message sent, received, relayed, lost or dropped,
agreeing with the byte counters of bandwidth.csv, in real multi-process runs and in the harness."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from conftest import node_events, read_csv, run_dsim
from dsim.nodelog import MESSAGE_COLUMNS
from dsim.testing import run_program


def message_rows(run_dir: Path) -> list[dict]:
    rows = []
    for path in sorted((run_dir / "messages").glob("*.csv")):
        with open(path) as fh:
            assert fh.readline().strip() == ",".join(MESSAGE_COLUMNS), path
        rows += read_csv(path)
    return rows


def assert_agrees_with_bandwidth(run_dir: Path) -> list[dict]:
    """Per node: sent + relayed rows are its msgs_sent, recv + relayed its msgs_recv, bytes alike."""
    rows = message_rows(run_dir)
    counts, nbytes = Counter(), Counter()
    for row in rows:
        counts[int(row["node"]), row["event"]] += 1
        nbytes[int(row["node"]), row["event"]] += int(row["bytes"])
    for b in read_csv(run_dir / "bandwidth.csv"):
        r = int(b["rank"])
        assert counts[r, "sent"] + counts[r, "relayed"] == int(b["msgs_sent"]), r
        assert counts[r, "recv"] + counts[r, "relayed"] == int(b["msgs_recv"]), r
        assert nbytes[r, "sent"] + nbytes[r, "relayed"] == int(b["bytes_sent"]), r
        assert nbytes[r, "recv"] + nbytes[r, "relayed"] == int(b["bytes_recv"]), r
        assert counts[r, "lost"] == int(b.get("msgs_lost") or 0), r
    return rows


def test_a_real_run_logs_every_message_once_where_it_is_sent_and_where_it_arrives(tmp_path: Path) -> None:
    """Five nodes on a ring plus a server, two per process: sockets, in-memory delivery and relays."""
    out = tmp_path / "run"
    res = run_dsim("launch", "--nodes", "5", "--topology", "ring", "--algorithm", "gather", "--quiet",
                   "--nodes-per-process", "2", "--out", str(out), "--set", "rounds=2", "--set", "gather.size=500")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (out / "messages").iterdir()) == ["w0.0.csv", "w0.1.csv", "w0.2.csv"]
    rows = assert_agrees_with_bandwidth(out)
    assert {r["event"] for r in rows} == {"sent", "recv", "relayed"}
    # The event logs' clock: every row falls before the node's closing `traffic` event.
    closing = {r: [e["t"] for e in node_events(out, r) if e["event"] == "traffic"][0] for r in range(6)}
    assert all(0 <= float(r["t"]) <= closing[int(r["node"])] for r in rows)
    # Every message sent is received by its destination, with the same kind and size, not before it left.
    sent = sorted((r["src"], r["dst"], r["kind"], r["bytes"], float(r["t"])) for r in rows if r["event"] == "sent")
    recv = sorted((r["src"], r["dst"], r["kind"], r["bytes"], float(r["t"])) for r in rows if r["event"] == "recv")
    assert [s[:4] for s in sent] == [r[:4] for r in recv]
    assert all(r[4] >= s[4] - 1e-3 for s, r in zip(sent, recv, strict=True))
    relays = [r for r in rows if r["event"] == "relayed"]
    assert relays and all(r["node"] not in (r["src"], r["dst"]) for r in relays)


def test_lost_messages_are_logged_by_the_links_sender(tmp_path: Path) -> None:
    run = run_program("gossip", nodes=6, topology="ring", run_dir=tmp_path,
                      sets=["rounds=6", "links.loss=0.3", "gossip.round_timeout=0.2"], timeout=60)
    rows = assert_agrees_with_bandwidth(tmp_path)
    lost = [r for r in rows if r["event"] == "lost"]
    assert lost and len(lost) == sum(t["msgs_lost"] for t in run.traffic.values())
    assert all(r["node"] == r["src"] for r in lost)  # gossip sends only to neighbours: no relays


def test_the_log_can_be_turned_off(tmp_path: Path) -> None:
    run_program("gossip", nodes=4, topology="ring", run_dir=tmp_path, sets=["rounds=2", "net.message_log=false"])
    assert (tmp_path / "bandwidth.csv").exists() and not (tmp_path / "messages").exists()
