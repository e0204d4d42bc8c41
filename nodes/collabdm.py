"""Sharing distilled data by distribution matching: base, LocalDM and CollabDM (one-shot, server-based).

All three share the shape of the CollabDM paper's Algorithm 1 and differ only in what a client sends:
- base: IPC random real images per class (the baseline every table needs);
- localdm: its local data distilled by DM; the server takes the union;
- collabdm: its distilled set plus, for each seed alpha_t the server assigned it, the mean embedding per
  class of B real images under the network built from alpha_t. The server initialises from the union
  and takes one SGD step per seed towards the clients' averaged means.
The server then trains fresh models on the global synthetic set (saved as synthetic.npz in the run
directory) and scores them on the test set.
A client that does not answer within `dm.client_timeout` is left out and recorded.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import numpy as np
from msgspec import Meta

from dsim.lazy import lazy_import
from dsim.node import Node
from dsim.nodes.options import ModelOptions
from dsim.program import Program

torch = lazy_import("torch")
dm = lazy_import("dsim.ml.dm")
dsa = lazy_import("dsim.ml.dsa")
evaluate = lazy_import("dsim.ml.evaluate")


class DMOptions(ModelOptions):
    """Distilled-data sharing by distribution matching (base, localdm, collabdm share this table)."""

    ipc: Annotated[int, Meta(ge=1, description="images per class of the global set; each client distills ipc // clients + 1")] = 10
    server_ipc: Annotated[int, Meta(ge=0, description="images per class the server keeps, drawn from the clients' union as the reference server does; 0 = ipc")] = 0
    iterations: Annotated[int, Meta(ge=0, description="client DM iterations (reference: 400 for CollabDM clients, 20,000 for DM)")] = 200
    lr: Annotated[float, Meta(gt=0, description="client pixel learning rate (SGD, momentum 0.5)")] = 1.0
    batch_real: Annotated[int, Meta(ge=1, description="real images per class per DM iteration (reference: 256)")] = 128
    seeds: Annotated[int, Meta(ge=1, description="T, the server's network seeds (reference: 400 server iterations)")] = 100
    participation: Annotated[float, Meta(gt=0, le=1, description="eps: fraction of the clients drawn for each seed")] = 1.0
    mean_batch: Annotated[int, Meta(ge=1, description="B, real images per class behind each client mean (reference: 512, 100 non-IID)")] = 256
    server_lr: Annotated[float, Meta(gt=0, description="server pixel learning rate (SGD, momentum 0.5)")] = 10.0
    pae: Annotated[int, Meta(ge=0, description="partition-and-expand factor l (0 = off; the paper uses 2)")] = 0
    eval_models: Annotated[int, Meta(ge=1, description="M fresh models trained on the global set")] = 3
    eval_epochs: Annotated[int, Meta(ge=0, description="epochs of each evaluation model (papers: 1000)")] = 100
    client_timeout: Annotated[float, Meta(gt=0, description="seconds the server waits for a client's set before going on without it")] = 1800.0

    def __post_init__(self) -> None:
        if self.pae == 1:
            raise ValueError("pae must be 0 (off) or a factor >= 2, got 1")

    @property
    def pae_factor(self) -> int | None:
        return self.pae or None


def local_ipc(ipc: int, clients: int) -> int:
    """Per-client images per class, as CollabDM's client code: ipc // clients + 1."""
    return ipc // clients + 1


class Server(Node):
    role = "server"
    mode = "collabdm"

    def draw_assignment(self, clients: list[int]) -> dict[int, list[int]]:
        """T seeds alpha_t and, per seed, a random subset Z_t of ceil(eps * K) clients."""
        opts = self.options
        rng = np.random.default_rng([self.config.seed, 7])
        seeds = [int(s) for s in rng.integers(1, 2**62, size=opts.seeds)]
        take = max(1, int(np.ceil(opts.participation * len(clients))))
        return {s: sorted(int(c) for c in rng.choice(clients, size=take, replace=False)) for s in seeds}

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        clients = self.clients
        assignment = self.draw_assignment(clients) if self.mode == "collabdm" else {}
        per_client = {k: [s for s, members in assignment.items() if k in members] for k in clients}
        for k in clients:
            await self.send(k, "assign", {"seeds": per_client[k]})
        replies = await self.gather_messages("set", clients, timeout=opts.client_timeout, allow_missing=True,
                                             progress="wait for clients")
        missing = sorted(set(clients) - set(replies))
        self.use_all_cores()  # the clients are done: refinement and evaluation may use the whole machine
        if not replies:
            raise RuntimeError("no client sent its synthetic set")
        union_x = torch.cat([m.payload["images"] for m in replies.values()]).to(self.device)
        union_y = torch.cat([m.payload["labels"] for m in replies.values()]).long().to(self.device)
        syn_x, syn_y = dm.keep_per_class(union_x, union_y, opts.server_ipc or opts.ipc,
                                         dsa.derive_seed(self.config.seed, 0x5E1))
        self.log_event("union", images=len(union_x), kept=len(syn_x), clients=len(replies), missing=missing)
        num_classes = data.dataset.num_classes
        strategy = dsa.default_strategy(data.dataset.name)
        if self.mode == "collabdm":
            targets, present = self.aggregate(assignment, replies)
            syn_x = await self.offload(
                dm.server_refine, syn_x, syn_y, targets, num_classes=num_classes, present=present,
                lr=opts.server_lr, model=opts.model_spec, dsa_strategy=strategy, pae_factor=opts.pae_factor,
                progress=lambda step, loss: self.log(phase="server_refine", step=step, loss=loss),
                on_step=partial(self.progress, "refine"),
            )
        np.savez(self.run_dir / "synthetic.npz", images=syn_x.cpu().numpy(), labels=syn_y.cpu().numpy())
        score = await self.offload(
            evaluate.evaluate_synthetic, syn_x, syn_y, data.dataset.test_x.to(self.device),
            data.dataset.test_y.to(self.device), num_models=opts.eval_models, epochs=opts.eval_epochs,
            model=opts.model_spec, seed=self.config.seed, dsa_strategy=strategy, pae_factor=opts.pae_factor,
            num_classes=num_classes, on_step=partial(self.progress, "evaluate model"),
        )
        self.log(phase="evaluation", **score)
        return {
            "accuracy_mean": score["mean"],
            "accuracy_std": score["std"],
            "accuracies": score["accuracies"],
            "num_eval_models": opts.eval_models,
            "finished_t": self.elapsed(),  # seconds since launch: the time this accuracy was reached
            "union_images": len(union_x),
            "synthetic_images": len(syn_x),
            "clients_answered": len(replies),
            "clients_missing": missing,
            "bytes_per_client": {str(k): m.nbytes for k, m in sorted(replies.items())},
        }

    @staticmethod
    def aggregate(assignment: dict[int, list[int]], replies: dict) -> tuple[dict, dict]:
        """Per seed, the unweighted mean of the answering clients' means (per class present)."""
        targets, present = {}, {}
        for seed, members in assignment.items():
            rows = []
            for k in members:
                if k in replies:
                    payload = replies[k].payload
                    rows.append((payload["means"][payload["seeds"].index(seed)], payload["counts"]))
            if rows:
                targets[seed], present[seed] = dm.aggregate_client_means([r[0] for r in rows],
                                                                         [r[1] for r in rows])
        return targets, present


class Client(Node):
    role = "client"
    mode = "collabdm"

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        self.progress("wait for seeds")
        seeds = (await self.recv("assign", src=self.server)).payload["seeds"]
        num_classes = data.dataset.num_classes
        ipc = local_ipc(opts.ipc, len(self.clients))
        pae = opts.pae_factor
        seed = dsa.derive_seed(self.config.seed, self.rank)
        strategy = dsa.default_strategy(data.dataset.name)
        images, labels = dm.init_from_real(data.train_x, data.train_y, ipc, seed, pae_factor=pae)
        if self.mode != "base":
            images = await self.offload(
                dm.distill_dm, images, labels, data.train_x, data.train_y, iterations=opts.iterations,
                lr=opts.lr, batch_real=opts.batch_real, model=opts.model_spec, num_classes=num_classes,
                dsa_strategy=strategy, seed=seed, pae_factor=pae, match_std=pae is not None,
                progress=self._progress, on_step=partial(self.progress, "distill"),
            )
        payload: dict[str, Any] = {"images": images.float(), "labels": labels, "seeds": seeds,
                                   "counts": dm.class_counts(data.train_y, num_classes)}
        if self.mode == "collabdm":
            payload["means"] = await self.offload(
                dm.client_mean_embeddings, data.train_x, data.train_y, seeds, num_classes,
                batch=opts.mean_batch, model=opts.model_spec, dsa_strategy=strategy, sample_seed=seed,
                on_step=partial(self.progress, "embed means"),
            )
        self.progress("send set")
        nbytes = await self.send(self.server, "set", payload)
        return {"images": len(images), "seeds": len(seeds), "bytes_sent": nbytes}

    def _progress(self, step: int, loss: float) -> None:
        if step % 50 == 0 or step == self.options.iterations:
            self.log(phase="distill", step=step, loss=loss)


def _variant(mode: str) -> Program:
    server = type(f"{mode.title()}Server", (Server,), {"mode": mode})
    client = type(f"{mode.title()}Client", (Client,), {"mode": mode})
    return Program(name=mode, roles={"server": server, "client": client}, needs_server=True,
                   uses_data=True, options=DMOptions, table="dm")


BASE = _variant("base")
LOCALDM = _variant("localdm")
COLLABDM = _variant("collabdm")
