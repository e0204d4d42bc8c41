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
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from msgspec import Meta

from dsim.lazy import lazy_import
from dsim.ml import StepFn
from dsim.node import Node
from dsim.nodes.options import ModelOptions
from dsim.program import Program
from dsim.transport import NodeTimeout

torch = lazy_import("torch")
dm = lazy_import("dsim.ml.dm")
dsa = lazy_import("dsim.ml.dsa")
evaluate = lazy_import("dsim.ml.evaluate")
models = lazy_import("dsim.ml.models")
mtt = lazy_import("dsim.ml.mtt")
train = lazy_import("dsim.ml.train")


class MTTOptions(ModelOptions):
    """Distill-and-share by matching training trajectories (REFERENCE §4), and its base-image baseline."""

    mode: Annotated[Literal["distilled", "base"], Meta(description="distilled (MTT) or base (random real images, no experts)")] = "distilled"
    ipc: Annotated[int, Meta(ge=1, description="images per class (per class present on the client)")] = 1
    dsa: Annotated[bool, Meta(description="DSA for experts, the unrolled student and every evaluation")] = True
    experts: Annotated[int, Meta(ge=1, description="expert trajectories per client (the paper: 30)")] = 30
    expert_train_epochs: Annotated[int, Meta(ge=1, description="epochs of each expert (reference: 50)")] = 50
    expert_batch: Annotated[int, Meta(ge=1, description="minibatch of expert training")] = 256
    store_experts_mb: Annotated[float, Meta(ge=0, description="expert buffers larger than this go to run_dir/experts/<rank>/ (memory-mapped)")] = 256.0
    keep_experts: Annotated[bool, Meta(description="keep the expert files after distillation (they can be GBs per node)")] = False
    iterations: Annotated[int, Meta(ge=0, description="distillation iterations")] = 2000
    syn_steps: Annotated[int, Meta(ge=1, description="N, student steps per iteration")] = 50
    expert_epochs: Annotated[int, Meta(ge=1, description="M, expert epochs the student must match")] = 2
    max_start_epoch: Annotated[int, Meta(ge=1, description="T+, latest expert epoch a student starts from")] = 2
    lr_img: Annotated[float, Meta(gt=0, description="pixel learning rate")] = 1000.0
    lr_lr: Annotated[float, Meta(gt=0, description="learning rate of the learned student lr")] = 1e-7
    lr_teacher: Annotated[float, Meta(gt=0, description="expert lr, and the student lr's initial value")] = 0.01
    batch_syn: Annotated[int, Meta(ge=0, description="synthetic images per student step; 0 = all")] = 0
    eval_every: Annotated[int, Meta(ge=0, description="client: score the set on its validation split every k iterations (0 = never)")] = 100
    client_eval_epochs: Annotated[int, Meta(ge=0, description="epochs of each fresh model scoring a client's set (papers: 1000)")] = 300
    client_eval_models: Annotated[int, Meta(ge=1, description="fresh models scoring a client's set")] = 1
    progress_every: Annotated[int, Meta(ge=1, description="iterations between progress messages (scored iterations always report)")] = 10
    client_timeout: Annotated[float, Meta(gt=0, description="seconds the server waits for a client's set")] = 86400.0
    select_on: Annotated[Literal["synthetic", "test_split"], Meta(description="held-out data of the server's lr search (see the module docstring)")] = "synthetic"
    holdout: Annotated[float, Meta(gt=0, lt=1, description="select_on=synthetic: fraction of each class's stacked images held out")] = 0.2
    select_size: Annotated[int, Meta(ge=1, description="select_on=test_split: test images kept apart for selection")] = 1000
    grid_sgd: Annotated[tuple[Annotated[float, Meta(gt=0)], ...], Meta(description="SGD lrs tried (momentum 0.9, wd 5e-4); ties go to the first")] = (0.01, 0.001, 0.03)
    grid_adam: Annotated[tuple[Annotated[float, Meta(gt=0)], ...], Meta(description="Adam lrs tried (wd 5e-4), after the SGD ones")] = (0.001, 0.0001)
    search_epochs: Annotated[int, Meta(ge=0, description="epochs of each lr-search model")] = 300
    eval_epochs: Annotated[int, Meta(ge=0, description="epochs of each final evaluation model (papers: 1000)")] = 500
    eval_models: Annotated[int, Meta(ge=1, description="fresh models trained on the stacked set")] = 3

    def __post_init__(self) -> None:
        if not self.grid_sgd and not self.grid_adam:
            raise ValueError("grid_sgd and grid_adam are both empty: nothing to train the global model with")
        if self.model == "convnet_bn":
            raise ValueError("MTT needs a model without batchnorm (the unrolled student has no running stats)")


def score(x: torch.Tensor, y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
          optimizer: str, lr: float, epochs: int, count: int, spec: Any, num_classes: int,
          dsa_strategy: str | None, seed: int, on_step: StepFn | None = None) -> list[float]:
    """Accuracy of `count` fresh models trained on (x, y) and tested on (test_x, test_y); on_step gets
    (models scored, count)."""
    out = []
    for i in range(count):
        if on_step is not None:
            on_step(i, count)
        net = models.build_model(spec, x.shape[1], num_classes, x.shape[-1], dsa.derive_seed(seed, i, 1),
                                 device=x.device)
        train.train_model(net, x, y, optimizer=optimizer, lr=lr, epochs=epochs, dsa_strategy=dsa_strategy,
                          seed=dsa.derive_seed(seed, i, 2))
        out.append(evaluate.evaluate(net, test_x, test_y))
    return out


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (train, held-out) indices: per class round(fraction x n), at least 1, never all."""
    rng = np.random.default_rng([seed, 0x401D])
    train, held = [], []
    y = labels.cpu().numpy()
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        held.extend(idx[:k])
        train.extend(idx[k:])
    as_index = lambda idx: torch.as_tensor(sorted(idx), dtype=torch.long, device=labels.device)  # noqa: E731
    return as_index(train), as_index(held)


def select_and_evaluate(syn_x: torch.Tensor, syn_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                        opts: MTTOptions, *, num_classes: int, dsa_strategy: str | None, seed: int,
                        log: Any, progress: Callable[[str, int, int], None]) -> dict[str, Any]:
    """Grid search over (optimizer, lr) on the held-out data, then the final scores on the test set.
    `progress` is the node's (phase, step, total)."""
    spec = opts.model_spec
    grid = [("sgd", lr) for lr in opts.grid_sgd] + [("adam", lr) for lr in opts.grid_adam]
    if opts.select_on == "test_split":
        n_sel = opts.select_size
        if not n_sel < len(test_x):
            raise ValueError(f"mtt.select_size must be below the {len(test_x)} test images, got {n_sel}")
        perm = torch.from_numpy(np.random.default_rng([seed, 0x7E57]).permutation(len(test_x))).to(test_x.device)
        fit_x, fit_y = syn_x, syn_y
        sel_x, sel_y = test_x[perm[:n_sel]], test_y[perm[:n_sel]]
        test_x, test_y = test_x[perm[n_sel:]], test_y[perm[n_sel:]]
    else:
        train_idx, held_idx = holdout_split(syn_y, opts.holdout, seed)
        fit_x, fit_y, sel_x, sel_y = syn_x[train_idx], syn_y[train_idx], syn_x[held_idx], syn_y[held_idx]
    search = []
    if len(sel_x) and len(fit_x):
        for i, (optimizer, lr) in enumerate(grid):
            progress("search lr", i, len(grid))
            acc = score(fit_x, fit_y, sel_x, sel_y, optimizer=optimizer, lr=lr, epochs=opts.search_epochs,
                        count=1, spec=spec, num_classes=num_classes, dsa_strategy=dsa_strategy,
                        seed=dsa.derive_seed(seed, 0x5EA))[0]
            search.append({"optimizer": optimizer, "lr": lr, "accuracy": acc})
            log(phase="search", optimizer=optimizer, lr=lr, accuracy=acc)
        best = max(search, key=lambda s: s["accuracy"])  # first of equals: the grid's order
        chosen = (best["optimizer"], best["lr"])
    else:  # nothing can be held out (one image per class): the grid's first entry
        chosen = grid[0]
    accs = score(syn_x, syn_y, test_x, test_y, optimizer=chosen[0], lr=chosen[1], epochs=opts.eval_epochs,
                 count=opts.eval_models, spec=spec, num_classes=num_classes, dsa_strategy=dsa_strategy,
                 seed=dsa.derive_seed(seed, 0xE7A), on_step=partial(progress, "evaluate model"))
    return {"accuracy_mean": statistics.fmean(accs), "accuracy_std": statistics.pstdev(accs), "accuracies": accs,
            "optimizer": chosen[0], "lr": chosen[1], "search": search, "select_on": opts.select_on,
            "selection_images": len(sel_x), "test_images": len(test_x)}


# ---------------------------------------------------------------- roles


class Server(Node):
    role = "server"

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        clients, logged = self.clients, defaultdict(int)

        def note(msg: Any) -> None:
            logged[msg.src] += 1
            self.log(client=msg.src, **msg.payload)

        async def log_progress() -> None:
            while True:
                try:
                    note(await self.recv("progress", timeout=opts.client_timeout))
                except NodeTimeout:
                    continue

        logger = asyncio.get_running_loop().create_task(log_progress())
        try:
            replies = await self.gather_messages("set", clients, timeout=opts.client_timeout, allow_missing=True,
                                                 progress="wait for clients")
        finally:
            logger.cancel()
            await asyncio.gather(logger, return_exceptions=True)
        for k, m in replies.items():  # progress sent before the set is already here (FIFO per link)
            while logged[k] < m.payload["progress_sent"]:
                note(await self.recv("progress", src=k))
        missing = sorted(set(clients) - set(replies))
        if not replies:
            raise RuntimeError("no client sent its set")
        syn_x = torch.cat([m.payload["images"] for m in replies.values()]).float()
        syn_y = torch.cat([m.payload["labels"] for m in replies.values()]).long()
        owner = np.concatenate([np.full(len(m.payload["labels"]), k) for k, m in replies.items()])
        np.savez(self.run_dir / "synthetic.npz", images=syn_x.numpy(), labels=syn_y.numpy(), client=owner)
        syn_x, syn_y = syn_x.to(self.device), syn_y.to(self.device)
        self.log_event("union", images=len(syn_x), clients=len(replies), missing=missing)
        ds = data.dataset
        result = await self.offload(
            select_and_evaluate, syn_x, syn_y, ds.test_x.to(self.device), ds.test_y.to(self.device), opts,
            num_classes=ds.num_classes, dsa_strategy=dsa.default_strategy(ds.name) if opts.dsa else None,
            seed=self.config.seed, log=self.log, progress=self.progress,
        )
        self.log(phase="evaluation", **{k: v for k, v in result.items() if k != "search"})
        return {
            **result,
            "mode": opts.mode,
            "num_eval_models": opts.eval_models,
            "finished_t": self.elapsed(),  # seconds since launch: the time this accuracy was reached
            "synthetic_images": len(syn_x),
            "class_counts": np.bincount(syn_y.cpu().numpy(), minlength=ds.num_classes).tolist(),
            "clients_answered": len(replies),
            "clients_missing": missing,
            "bytes_per_client": {str(k): m.nbytes for k, m in sorted(replies.items())},
        }


class Client(Node):
    role = "client"

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        ds, ipc = data.dataset, opts.ipc
        seed = dsa.derive_seed(self.config.seed, self.rank)
        strategy = dsa.default_strategy(ds.name) if opts.dsa else None
        has_val = len(data.val_x) > 0
        self._loop, self._pending = asyncio.get_running_loop(), []
        base_x, base_y = dm.init_from_real(data.train_x, data.train_y, ipc, dsa.derive_seed(seed, -2))
        out: dict[str, Any] = {"mode": opts.mode, "images": len(base_x), "train_samples": len(data.train_x),
                               "classes": sorted(set(base_y.tolist()))}
        if opts.mode == "base":
            images, labels = base_x, base_y
            if has_val:
                out["base_val"] = await self.offload(self.val_score, base_x, base_y, opts.lr_teacher,
                                                     seed, strategy)
        else:
            images, labels = await self.distill(seed, strategy, has_val, out)
        self.progress("send set")
        progress_bytes = sum(await asyncio.gather(*(asyncio.wrap_future(f) for f in self._pending)))
        nbytes = await self.send(self.server, "set", {"images": images.float(), "labels": labels.long(),
                                                      "progress_sent": len(self._pending)})
        out.update(set_bytes=nbytes, progress_bytes=progress_bytes, bytes_sent=nbytes + progress_bytes,
                   progress_messages=len(self._pending))
        return out

    async def distill(self, seed: int, strategy: str | None, has_val: bool,
                      out: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        opts, data, ds = self.options, self.data, self.data.dataset
        spec = opts.model_spec
        params = models.param_count(models.build_model(spec, ds.image_shape[0], ds.num_classes, ds.image_shape[-1], 0))
        n_exp, epochs = opts.experts, opts.expert_train_epochs
        buffer_mb = n_exp * (epochs + 1) * params * 4 / 2**20
        store = Path(self.run_dir) / "experts" / str(self.rank) if buffer_mb > opts.store_experts_mb else None

        def expert_progress(done: int, total: int) -> None:
            self.progress("expert epochs", done, total)
            if done % epochs == 0:
                self.report({"phase": "experts", "epochs_done": done, "epochs_total": total})

        experts = await self.offload(
            mtt.train_experts, data.train_x, data.train_y, num_experts=n_exp, epochs=epochs,
            num_classes=ds.num_classes, model=spec, lr=opts.lr_teacher, batch=opts.expert_batch,
            dsa_strategy=strategy, seed=seed, store_dir=store, progress=expert_progress,
        )
        every, iterations = opts.progress_every, opts.iterations

        def distill_progress(entry: dict) -> None:
            it = entry["iteration"]
            if it % every == 0 or it == iterations or "val_accuracy" in entry:
                self.report({"phase": "distill", **entry})

        eval_every = opts.eval_every if has_val else 0
        res = await self.offload(
            mtt.distill_mtt, data.train_x, data.train_y, experts, ipc=opts.ipc, iterations=iterations,
            num_classes=ds.num_classes, syn_steps=opts.syn_steps, expert_epochs=opts.expert_epochs,
            max_start_epoch=opts.max_start_epoch, lr_img=opts.lr_img, lr_lr=opts.lr_lr,
            lr_teacher=opts.lr_teacher, batch_syn=opts.batch_syn or None, model=spec,
            dsa_strategy=strategy, seed=seed, eval_every=eval_every, val_x=data.val_x if has_val else None,
            val_y=data.val_y if has_val else None, eval_epochs=opts.client_eval_epochs,
            eval_models=opts.client_eval_models, progress=distill_progress, on_step=partial(self.progress, "distill"),
        )
        del experts
        if store is not None and not opts.keep_experts:
            shutil.rmtree(store, ignore_errors=True)
        out.update(learned_lr=res.lr, best_iteration=res.best_iteration, experts_on_disk=store is not None,
                   expert_buffer_mb=round(buffer_mb, 3))
        if has_val:
            if eval_every:  # both scored inside distill_mtt with the same fresh-model seeds
                out["base_val"], out["distilled_val"] = res.initial_accuracy, res.best_accuracy
            else:
                base_x, base_y = dm.init_from_real(data.train_x, data.train_y, opts.ipc, dsa.derive_seed(seed, -2))
                out["base_val"] = await self.offload(self.val_score, base_x, base_y, opts.lr_teacher,
                                                     seed, strategy)
                out["distilled_val"] = await self.offload(self.val_score, res.images, res.labels, res.lr,
                                                          seed, strategy)
        return res.images, res.labels

    def val_score(self, x: torch.Tensor, y: torch.Tensor, lr: float, seed: int, strategy: str | None) -> float:
        """Fresh models trained on (x, y), scored on the validation split, as distill_mtt scores."""
        opts, data = self.options, self.data
        return evaluate.evaluate_synthetic(
            x, y, data.val_x, data.val_y, num_models=opts.client_eval_models,
            epochs=opts.client_eval_epochs, model=opts.model_spec, seed=dsa.derive_seed(seed, -3), lr=lr,
            dsa_strategy=strategy, num_classes=data.dataset.num_classes,
            on_step=partial(self.progress, "validate model"),
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
                  options=MTTOptions, summarize=summarize)
