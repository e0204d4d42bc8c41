"""Data set-up cost per node process: loading MNIST (cold, cached) and partitioning it.

Usage: .venv/bin/python benchmarks/bench_data.py [--data-dir DIR] [--nodes 1000]
Writes benchmarks/results/data.json. Target: about a second or less for each figure.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from results_file import write_results  # benchmarks/ is the script's folder

from dsim.data.datasets import clear_cache, load_dataset
from dsim.data.partitioners import PARTITIONERS, make_partitioner

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--nodes", type=int, default=1000)
    args = parser.parse_args()

    clear_cache()
    results: dict[str, float] = {
        "mnist_load_cold_s": _timed(lambda: load_dataset("mnist", args.data_dir)),
        "mnist_load_cached_s": _timed(lambda: load_dataset("mnist", args.data_dir), repeats=5),
    }
    labels = load_dataset("mnist", args.data_dir).train_y.numpy()
    for method in PARTITIONERS:  # each with its default parameters
        partitioner = make_partitioner(method)
        results[f"partition_{method}_{args.nodes}_nodes_s"] = _timed(
            lambda p=partitioner: p.split(labels, args.nodes, 0), repeats=3)
    floor = make_partitioner("dirichlet", {"beta": 0.1, "class_floor": 5})
    results["partition_dirichlet_beta0.1_floor5_100_nodes_s"] = _timed(
        lambda: floor.split(labels, 100, 0), repeats=3)

    out = write_results("data", {"nodes": args.nodes, "seconds": results})
    width = max(map(len, results))
    for name, seconds in results.items():
        print(f"{name:<{width}}  {seconds:8.4f} s")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
