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

import os
from typing import Any

import numpy as np
import torch

from dsim.ml.dm import (
    aggregate_client_means,
    class_counts,
    client_mean_embeddings,
    distill_dm,
    init_from_real,
    server_refine,
)
from dsim.ml.dsa import default_strategy, derive_seed
from dsim.ml.evaluate import evaluate_synthetic
from dsim.ml.models import spec_from_options
from dsim.node import Node
from dsim.program import Program

DEFAULTS: dict[str, Any] = {
    "ipc": 10,  # images per class of the global synthetic set; each client makes ipc // clients + 1
    "iterations": 200,  # client DM iterations (reference: 400 for CollabDM clients, 20,000 for DM)
    "lr": 1.0,  # client pixel learning rate (SGD, momentum 0.5)
    "batch_real": 128,  # real images per class per DM iteration (reference: 256)
    "seeds": 100,  # T, the server's seeds (reference: 400 server iterations)
    "participation": 1.0,  # eps: fraction of clients drawn for each seed
    "mean_batch": 256,  # B, real images per class behind each client mean (reference: 512 / 100 non-IID)
    "server_lr": 10.0,
    "pae": 0,  # partition-and-expand factor l (0 = off; the paper uses 2)
    "model": "convnet",
    "width": 0,  # channels of the ConvNet; 0 = the preset's 128
    "eval_models": 3,  # M fresh models trained on the global set
    "eval_epochs": 100,  # papers: 1000
    "client_timeout": 1800.0,  # seconds the server waits for a client's set before going on without it
}


def local_ipc(ipc: int, clients: int) -> int:
    """Per-client images per class, as CollabDM's client code: ipc // clients + 1."""
    return ipc // clients + 1


class Server(Node):
    role = "server"
    mode = "collabdm"

    def draw_assignment(self, clients: list[int]) -> dict[int, list[int]]:
        """T seeds alpha_t and, per seed, a random subset Z_t of ceil(eps * K) clients."""
        opts = self.options
        rng = np.random.default_rng([self.config["seed"], 7])
        seeds = [int(s) for s in rng.integers(1, 2**62, size=int(opts["seeds"]))]
        take = max(1, int(np.ceil(float(opts["participation"]) * len(clients))))
        return {s: sorted(int(c) for c in rng.choice(clients, size=take, replace=False)) for s in seeds}

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        clients = self.clients
        assignment = self.draw_assignment(clients) if self.mode == "collabdm" else {}
        per_client = {k: [s for s, members in assignment.items() if k in members] for k in clients}
        for k in clients:
            await self.send(k, "assign", {"seeds": per_client[k]})
        replies = await self.gather_messages("set", clients, timeout=float(opts["client_timeout"]),
                                             allow_missing=True)
        missing = sorted(set(clients) - set(replies))
        # The clients are done: the server's refinement and evaluation may use every core of its machine.
        torch.set_num_threads(os.cpu_count() or 1)
        if not replies:
            raise RuntimeError("no client sent its synthetic set")
        syn_x = torch.cat([m.payload["images"] for m in replies.values()])
        syn_y = torch.cat([m.payload["labels"] for m in replies.values()]).long()
        self.log_event("union", images=len(syn_x), clients=len(replies), missing=missing)
        num_classes = data.dataset.num_classes
        pae = int(opts["pae"]) or None
        strategy = default_strategy(data.dataset.name)
        if self.mode == "collabdm":
            targets, present = self.aggregate(assignment, replies)
            syn_x = await self.offload(
                server_refine, syn_x, syn_y, targets, num_classes=num_classes, present=present,
                lr=float(opts["server_lr"]), model=spec_from_options(opts), dsa_strategy=strategy, pae_factor=pae,
                progress=lambda step, loss: self.log(phase="server_refine", step=step, loss=loss),
            )
        np.savez(self.run_dir / "synthetic.npz", images=syn_x.numpy(), labels=syn_y.numpy())
        score = await self.offload(
            evaluate_synthetic, syn_x, syn_y, data.dataset.test_x, data.dataset.test_y,
            num_models=int(opts["eval_models"]), epochs=int(opts["eval_epochs"]), model=spec_from_options(opts),
            seed=int(self.config["seed"]), dsa_strategy=strategy, pae_factor=pae, num_classes=num_classes,
        )
        self.log(phase="evaluation", **score)
        return {
            "accuracy_mean": score["mean"],
            "accuracy_std": score["std"],
            "accuracies": score["accuracies"],
            "num_eval_models": int(opts["eval_models"]),
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
                targets[seed], present[seed] = aggregate_client_means([r[0] for r in rows],
                                                                      [r[1] for r in rows])
        return targets, present


class Client(Node):
    role = "client"
    mode = "collabdm"

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        seeds = (await self.recv("assign", src=self.server)).payload["seeds"]
        num_classes = data.dataset.num_classes
        ipc = local_ipc(int(opts["ipc"]), len(self.clients))
        pae = int(opts["pae"]) or None
        seed = derive_seed(int(self.config["seed"]), self.rank)
        strategy = default_strategy(data.dataset.name)
        images, labels = init_from_real(data.train_x, data.train_y, ipc, seed, pae_factor=pae)
        if self.mode != "base":
            images = await self.offload(
                distill_dm, images, labels, data.train_x, data.train_y, iterations=int(opts["iterations"]),
                lr=float(opts["lr"]), batch_real=int(opts["batch_real"]), model=spec_from_options(opts),
                num_classes=num_classes, dsa_strategy=strategy, seed=seed, pae_factor=pae,
                match_std=bool(pae), progress=self._progress,
            )
        payload: dict[str, Any] = {"images": images.float(), "labels": labels, "seeds": seeds,
                                   "counts": class_counts(data.train_y, num_classes)}
        if self.mode == "collabdm":
            payload["means"] = await self.offload(
                client_mean_embeddings, data.train_x, data.train_y, seeds, num_classes,
                batch=int(opts["mean_batch"]), model=spec_from_options(opts), dsa_strategy=strategy, sample_seed=seed,
            )
        nbytes = await self.send(self.server, "set", payload)
        return {"images": len(images), "seeds": len(seeds), "bytes_sent": nbytes}

    def _progress(self, step: int, loss: float) -> None:
        if step % 50 == 0 or step == int(self.options["iterations"]):
            self.log(phase="distill", step=step, loss=loss)


def _variant(mode: str) -> Program:
    server = type(f"{mode.title()}Server", (Server,), {"mode": mode})
    client = type(f"{mode.title()}Client", (Client,), {"mode": mode})
    return Program(name=mode, roles={"server": server, "client": client}, needs_server=True,
                   uses_data=True, defaults=DEFAULTS, table="dm")


BASE = _variant("base")
LOCALDM = _variant("localdm")
COLLABDM = _variant("collabdm")
