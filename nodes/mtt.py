"""Sharing distilled data (Epple, "On the Efficiency of Sharing Distilled Data in FL"): MTT, one shot.

Clients (mode "distilled"): train `experts` expert trajectories on their local train split, distill
it by trajectory matching (dsim.ml.mtt) into `ipc` images per class present, report progress to the
server while they go (kind "progress": expert epochs, then iteration, loss, learned lr and, when
scored, the validation accuracy of the current set), and finally send the best set found (kind
"set": images and labels only; the learned lr stays home, as in the paper). Mode "base" sends the
same number of random real images instead (the very images distillation starts from), so the
paper's "base" column comes from the same program.
Each client also reports, on its own validation split, the accuracy of fresh models trained on its
base images and on its distilled set.

The server stacks the sets and picks the optimizer (SGD or Adam) and lr from a small grid on held-out
data it is allowed to see (`select_on`):
- "synthetic" (default): a stratified part of the stacked set is held out (classes with a single
  image stay in training); candidates train on the rest and are scored on the held-out images;
- "test_split": a seeded part of the test set (`select_size` images) is held out for selection and
  the reported accuracy uses only the remaining test images (disjoint: no test leakage).
It then trains `eval_models` fresh models on the whole stacked set with the chosen settings and
scores them on the test set. A client silent for `client_timeout` seconds is left out and recorded.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsim.errors import DsimError
from dsim.ml.dm import init_from_real
from dsim.ml.dsa import default_strategy, derive_seed
from dsim.ml.evaluate import evaluate, evaluate_synthetic
from dsim.ml.models import build_model, param_count, spec_from_options
from dsim.ml.mtt import distill_mtt, train_experts
from dsim.ml.train import train_model
from dsim.node import Node
from dsim.program import Program
from dsim.transport import NodeTimeout

MODES = ("distilled", "base")
SELECT_ON = ("synthetic", "test_split")

DEFAULTS: dict[str, Any] = {
    "mode": "distilled",  # "distilled" (MTT) or "base" (random real images, no experts)
    "ipc": 1,  # images per class (per class present on the client)
    "model": "convnet",
    "width": 0,  # conv channels; 0 keeps the preset's (128)
    "dsa": True,  # DSA for experts, the unrolled student and every evaluation
    # experts (REFERENCE §4; the paper: 30 experts per node, 50 epochs as the reference)
    "experts": 30,
    "expert_train_epochs": 50,
    "expert_batch": 256,
    "store_experts_mb": 256.0,  # buffers larger than this go to run_dir/experts/<rank>/ (memory-mapped)
    "keep_experts": False,  # keep those files after distillation (they can be GBs per node)
    # distillation
    "iterations": 2000,
    "syn_steps": 50,  # N
    "expert_epochs": 2,  # M
    "max_start_epoch": 2,  # T+
    "lr_img": 1000.0,
    "lr_lr": 1e-7,
    "lr_teacher": 0.01,
    "batch_syn": 0,  # 0 = all synthetic images every student step
    "eval_every": 100,  # client: score the set on its validation split every k iterations (0 = never)
    "client_eval_epochs": 300,  # epochs of each fresh model scoring a client's set (papers: 1000)
    "client_eval_models": 1,
    "progress_every": 10,  # iterations between progress messages (scored iterations always report)
    "client_timeout": 86400.0,  # seconds the server waits for a client's set
    # server
    "select_on": "synthetic",  # "synthetic" or "test_split" (see the module docstring)
    "holdout": 0.2,  # select_on=synthetic: fraction of each class's stacked images held out
    "select_size": 1000,  # select_on=test_split: test images kept apart for selection
    "grid_sgd": [0.01, 0.001, 0.03],  # SGD lrs tried (momentum 0.9, wd 5e-4); ties go to the first
    "grid_adam": [0.001, 0.0001],  # Adam lrs tried (wd 5e-4), after the SGD ones
    "search_epochs": 300,
    "eval_epochs": 500,  # papers: 1000
    "eval_models": 3,
}


def score(x: torch.Tensor, y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
          optimizer: str, lr: float, epochs: int, models: int, spec: Any, num_classes: int,
          dsa_strategy: str | None, seed: int) -> list[float]:
    """Accuracy of `models` fresh models trained on (x, y) and tested on (test_x, test_y)."""
    out = []
    for i in range(models):
        net = build_model(spec, x.shape[1], num_classes, x.shape[-1], derive_seed(seed, i, 1))
        train_model(net, x, y, optimizer=optimizer, lr=lr, epochs=epochs, dsa_strategy=dsa_strategy,
                    seed=derive_seed(seed, i, 2))
        out.append(evaluate(net, test_x, test_y))
    return out


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (train, held-out) indices: per class round(fraction x n), at least 1, never all."""
    rng = np.random.default_rng([seed, 0x401D])
    train, held = [], []
    y = labels.numpy()
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        held.extend(idx[:k])
        train.extend(idx[k:])
    return torch.as_tensor(sorted(train), dtype=torch.long), torch.as_tensor(sorted(held), dtype=torch.long)


def select_and_evaluate(syn_x: torch.Tensor, syn_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                        opts: Mapping[str, Any], *, num_classes: int, dsa_strategy: str | None, seed: int,
                        log: Any) -> dict[str, Any]:
    """Grid search over (optimizer, lr) on the held-out data, then the final scores on the test set."""
    spec = spec_from_options(opts)
    grid = [("sgd", float(lr)) for lr in opts["grid_sgd"]] + [("adam", float(lr)) for lr in opts["grid_adam"]]
    if not grid:
        raise DsimError("mtt.grid_sgd and mtt.grid_adam are both empty: nothing to train the global model with")
    if opts["select_on"] == "test_split":
        n_sel = int(opts["select_size"])
        if not 0 < n_sel < len(test_x):
            raise DsimError(f"mtt.select_size must be in 1..{len(test_x) - 1}, got {n_sel}")
        perm = torch.from_numpy(np.random.default_rng([seed, 0x7E57]).permutation(len(test_x)))
        fit_x, fit_y = syn_x, syn_y
        sel_x, sel_y = test_x[perm[:n_sel]], test_y[perm[:n_sel]]
        test_x, test_y = test_x[perm[n_sel:]], test_y[perm[n_sel:]]
    else:
        train_idx, held_idx = holdout_split(syn_y, float(opts["holdout"]), seed)
        fit_x, fit_y, sel_x, sel_y = syn_x[train_idx], syn_y[train_idx], syn_x[held_idx], syn_y[held_idx]
    search = []
    if len(sel_x) and len(fit_x):
        for optimizer, lr in grid:
            acc = score(fit_x, fit_y, sel_x, sel_y, optimizer=optimizer, lr=lr, epochs=int(opts["search_epochs"]),
                        models=1, spec=spec, num_classes=num_classes, dsa_strategy=dsa_strategy,
                        seed=derive_seed(seed, 0x5EA))[0]
            search.append({"optimizer": optimizer, "lr": lr, "accuracy": acc})
            log(phase="search", optimizer=optimizer, lr=lr, accuracy=acc)
        best = max(search, key=lambda s: s["accuracy"])  # first of equals: the grid's order
        chosen = (best["optimizer"], best["lr"])
    else:  # nothing can be held out (one image per class): the grid's first entry
        chosen = grid[0]
    accs = score(syn_x, syn_y, test_x, test_y, optimizer=chosen[0], lr=chosen[1], epochs=int(opts["eval_epochs"]),
                 models=int(opts["eval_models"]), spec=spec, num_classes=num_classes, dsa_strategy=dsa_strategy,
                 seed=derive_seed(seed, 0xE7A))
    return {"accuracy_mean": statistics.fmean(accs), "accuracy_std": statistics.pstdev(accs), "accuracies": accs,
            "optimizer": chosen[0], "lr": chosen[1], "search": search, "select_on": opts["select_on"],
            "selection_images": len(sel_x), "test_images": len(test_x)}


# ---------------------------------------------------------------- roles


def check_options(opts: Mapping[str, Any]) -> None:
    if opts["mode"] not in MODES:
        raise DsimError(f"mtt.mode must be one of {', '.join(MODES)}, got {opts['mode']!r}")
    if opts["select_on"] not in SELECT_ON:
        raise DsimError(f"mtt.select_on must be one of {', '.join(SELECT_ON)}, got {opts['select_on']!r}")
    if int(opts["ipc"]) < 1:
        raise DsimError(f"mtt.ipc must be >= 1, got {opts['ipc']}")


class Server(Node):
    role = "server"

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        check_options(opts)
        clients, logged = self.clients, defaultdict(int)

        def note(msg: Any) -> None:
            logged[msg.src] += 1
            self.log(client=msg.src, **msg.payload)

        async def log_progress() -> None:
            while True:
                try:
                    note(await self.recv("progress", timeout=float(opts["client_timeout"])))
                except NodeTimeout:
                    continue

        logger = asyncio.get_running_loop().create_task(log_progress())
        try:
            replies = await self.gather_messages("set", clients, timeout=float(opts["client_timeout"]),
                                                 allow_missing=True)
        finally:
            logger.cancel()
            await asyncio.gather(logger, return_exceptions=True)
        for k, m in replies.items():  # progress sent before the set is already here (FIFO per link)
            while logged[k] < int(m.payload["progress_sent"]):
                note(await self.recv("progress", src=k))
        missing = sorted(set(clients) - set(replies))
        if not replies:
            raise RuntimeError("no client sent its set")
        syn_x = torch.cat([m.payload["images"] for m in replies.values()]).float()
        syn_y = torch.cat([m.payload["labels"] for m in replies.values()]).long()
        owner = torch.cat([torch.full((len(m.payload["labels"]),), k) for k, m in replies.items()])
        np.savez(self.run_dir / "synthetic.npz", images=syn_x.numpy(), labels=syn_y.numpy(), client=owner.numpy())
        self.log_event("union", images=len(syn_x), clients=len(replies), missing=missing)
        ds = data.dataset
        result = await self.offload(
            select_and_evaluate, syn_x, syn_y, ds.test_x, ds.test_y, opts, num_classes=ds.num_classes,
            dsa_strategy=default_strategy(ds.name) if opts["dsa"] else None, seed=int(self.config["seed"]),
            log=self.log,
        )
        self.log(phase="evaluation", **{k: v for k, v in result.items() if k != "search"})
        return {
            **result,
            "mode": opts["mode"],
            "num_eval_models": int(opts["eval_models"]),
            "synthetic_images": len(syn_x),
            "class_counts": np.bincount(syn_y.numpy(), minlength=ds.num_classes).tolist(),
            "clients_answered": len(replies),
            "clients_missing": missing,
            "bytes_per_client": {str(k): m.nbytes for k, m in sorted(replies.items())},
        }


class Client(Node):
    role = "client"

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        check_options(opts)
        ds, ipc = data.dataset, int(opts["ipc"])
        seed = derive_seed(int(self.config["seed"]), self.rank)
        strategy = default_strategy(ds.name) if opts["dsa"] else None
        has_val = len(data.val_x) > 0
        self._loop, self._pending = asyncio.get_running_loop(), []
        base_x, base_y = init_from_real(data.train_x, data.train_y, ipc, derive_seed(seed, -2))
        out: dict[str, Any] = {"mode": opts["mode"], "images": len(base_x), "train_samples": len(data.train_x),
                               "classes": sorted(set(base_y.tolist()))}
        if opts["mode"] == "base":
            images, labels = base_x, base_y
            if has_val:
                out["base_val"] = await self.offload(self.val_score, base_x, base_y, float(opts["lr_teacher"]),
                                                     seed, strategy)
        else:
            images, labels = await self.distill(seed, strategy, has_val, out)
        progress_bytes = sum(await asyncio.gather(*(asyncio.wrap_future(f) for f in self._pending)))
        nbytes = await self.send(self.server, "set", {"images": images.float(), "labels": labels.long(),
                                                      "progress_sent": len(self._pending)})
        out.update(set_bytes=nbytes, progress_bytes=progress_bytes, bytes_sent=nbytes + progress_bytes,
                   progress_messages=len(self._pending))
        return out

    async def distill(self, seed: int, strategy: str | None, has_val: bool,
                      out: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        opts, data, ds = self.options, self.data, self.data.dataset
        spec = spec_from_options(opts)
        params = param_count(build_model(spec, ds.image_shape[0], ds.num_classes, ds.image_shape[-1], 0))
        n_exp, epochs = int(opts["experts"]), int(opts["expert_train_epochs"])
        buffer_mb = n_exp * (epochs + 1) * params * 4 / 2**20
        store = Path(self.run_dir) / "experts" / str(self.rank) if buffer_mb > float(opts["store_experts_mb"]) else None

        def expert_progress(done: int, total: int) -> None:
            if done % epochs == 0:
                self.report({"phase": "experts", "epochs_done": done, "epochs_total": total})

        experts = await self.offload(
            train_experts, data.train_x, data.train_y, num_experts=n_exp, epochs=epochs,
            num_classes=ds.num_classes, model=spec, lr=float(opts["lr_teacher"]), batch=int(opts["expert_batch"]),
            dsa_strategy=strategy, seed=seed, store_dir=store, progress=expert_progress,
        )
        every, iterations = max(1, int(opts["progress_every"])), int(opts["iterations"])

        def distill_progress(entry: dict) -> None:
            it = entry["iteration"]
            if it % every == 0 or it == iterations or "val_accuracy" in entry:
                self.report({"phase": "distill", **entry})

        eval_every = int(opts["eval_every"]) if has_val else 0
        res = await self.offload(
            distill_mtt, data.train_x, data.train_y, experts, ipc=int(opts["ipc"]), iterations=iterations,
            num_classes=ds.num_classes, syn_steps=int(opts["syn_steps"]), expert_epochs=int(opts["expert_epochs"]),
            max_start_epoch=int(opts["max_start_epoch"]), lr_img=float(opts["lr_img"]), lr_lr=float(opts["lr_lr"]),
            lr_teacher=float(opts["lr_teacher"]), batch_syn=int(opts["batch_syn"]) or None, model=spec,
            dsa_strategy=strategy, seed=seed, eval_every=eval_every, val_x=data.val_x if has_val else None,
            val_y=data.val_y if has_val else None, eval_epochs=int(opts["client_eval_epochs"]),
            eval_models=int(opts["client_eval_models"]), progress=distill_progress,
        )
        del experts
        if store is not None and not opts["keep_experts"]:
            shutil.rmtree(store, ignore_errors=True)
        out.update(learned_lr=res.lr, best_iteration=res.best_iteration, experts_on_disk=store is not None,
                   expert_buffer_mb=round(buffer_mb, 3))
        if has_val:
            if eval_every:  # both scored inside distill_mtt with the same fresh-model seeds
                out["base_val"], out["distilled_val"] = res.initial_accuracy, res.best_accuracy
            else:
                base_x, base_y = init_from_real(data.train_x, data.train_y, int(opts["ipc"]), derive_seed(seed, -2))
                out["base_val"] = await self.offload(self.val_score, base_x, base_y, float(opts["lr_teacher"]),
                                                     seed, strategy)
                out["distilled_val"] = await self.offload(self.val_score, res.images, res.labels, res.lr,
                                                          seed, strategy)
        return res.images, res.labels

    def val_score(self, x: torch.Tensor, y: torch.Tensor, lr: float, seed: int, strategy: str | None) -> float:
        """Fresh models trained on (x, y), scored on the validation split, as distill_mtt scores."""
        opts, data = self.options, self.data
        return evaluate_synthetic(
            x, y, data.val_x, data.val_y, num_models=int(opts["client_eval_models"]),
            epochs=int(opts["client_eval_epochs"]), model=spec_from_options(opts), seed=derive_seed(seed, -3), lr=lr,
            dsa_strategy=strategy, num_classes=data.dataset.num_classes,
        )["mean"]

    def report(self, payload: dict[str, Any]) -> None:
        """Send a progress message from the compute thread; the set waits until all have gone."""
        fut: Future = asyncio.run_coroutine_threadsafe(self.send(self.server, "progress", payload), self._loop)
        self._pending.append(fut)


def summarize(results: Mapping[int, dict[str, Any]], graph: Any) -> dict[str, Any]:
    """The server's result, each client's base / distilled validation accuracy and bytes per client."""
    server = graph.graph.get("server")
    out = dict(results.get(server) or {})
    per_client = {str(r): {k: res.get(k) for k in ("base_val", "distilled_val", "learned_lr", "images", "classes",
                                                   "set_bytes", "progress_bytes", "bytes_sent")}
                  for r, res in sorted(results.items()) if r != server and res}
    out["clients"] = per_client
    gains = [c["distilled_val"] - c["base_val"] for c in per_client.values()
             if c["distilled_val"] is not None and c["base_val"] is not None]
    out["mean_val_gain"] = statistics.fmean(gains) if gains else None
    return out


PROGRAM = Program(name="mtt", roles={"server": Server, "client": Client}, needs_server=True, uses_data=True,
                  defaults=DEFAULTS, summarize=summarize)
