"""FedAvg (McMahan et al.): the model-sharing baseline of the distilled-data paper's Table I.

Each of `rounds` rounds, the server draws a fraction `participation` of the clients (seeded rng),
sends them the global parameters as one flat float32 vector, each trains locally and answers with
its parameters and its number of training samples; the server averages them weighted by samples
and scores the global model on the test set. Every participating client therefore moves exactly
2 x model size per round (plus small headers), the figure the distilled-data paper compares with.
The helpers below (model building, local training) are shared with D-PSGD (dsim.nodes.dpsgd).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dsim.errors import DsimError
from dsim.ml.dsa import default_strategy, derive_seed
from dsim.ml.evaluate import evaluate
from dsim.ml.models import (
    build_model,
    flat_params,
    load_flat_params,
    param_count,
    spec_from_options,
)
from dsim.ml.train import train_model
from dsim.node import Node
from dsim.program import Program
from dsim.transport import NodeTimeout

DEFAULTS: dict[str, Any] = {
    "local_epochs": 1,  # passes over the local data per round (ignored when local_steps > 0)
    "local_steps": 0,  # if > 0: exactly this many SGD minibatch steps per round instead of epochs
    "lr": 0.01,
    "momentum": 0.9,  # local SGD momentum; the buffer starts afresh every round
    "weight_decay": 5e-4,
    "batch": 64,
    "participation": 1.0,  # fraction of the clients drawn (by the server, seeded) for each round
    "model": "convnet",  # a preset of dsim.ml.models; batchnorm presets are refused (buffers)
    "width": 0,  # conv channels; 0 keeps the preset's (128)
    "dsa": False,  # DSA augmentation on local batches
    "eval_every": 1,  # score the global model every k rounds (and always after the last)
    "test_subset": 0,  # score on the first n test images (0 = the whole test set)
    "round_timeout": 1800.0,  # seconds the server waits for a client's update before going on
}


def build_shared_model(opts: Mapping[str, Any], data: Any, seed: int) -> nn.Module:
    """The model every node starts from: same spec and seed everywhere, so same initial weights.

    Only parameters are averaged, so a model with buffers (batchnorm running stats) would keep
    unaveraged state: refused with a clear message rather than silently evaluated wrong.
    """
    ds = data.dataset
    model = build_model(spec_from_options(opts), ds.image_shape[0], ds.num_classes, ds.image_shape[-1],
                        derive_seed(seed, 0x5EED))
    if any(True for _ in model.buffers()):
        raise DsimError(f"model '{opts['model']}' keeps buffers (batchnorm); parameter averaging "
                        "needs a model without them, e.g. 'convnet' (instance norm)")
    return model


def local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opts: Mapping[str, Any],
                dataset: str, seed: int) -> float:
    """Train in place for `local_epochs` epochs, or exactly `local_steps` minibatch steps.

    Steps are run as one epoch over `local_steps x batch` samples drawn (seeded) from the local
    data, repeating it when it is smaller. The lr stays constant (no decay inside a round).
    """
    batch, steps = int(opts["batch"]), int(opts["local_steps"])
    epochs = int(opts["local_epochs"])
    if steps < 0 or epochs < 0 or (steps == 0 and epochs == 0):
        raise DsimError(f"need local_steps > 0 or local_epochs > 0, got {steps} and {epochs}")
    if steps > 0:
        gen = torch.Generator().manual_seed(seed)
        need = steps * batch
        order = torch.randperm(len(x), generator=gen).repeat(-(-need // len(x)))[:need]
        x, y, epochs = x[order], y[order], 1
    return train_model(
        model, x, y, epochs=epochs, lr=float(opts["lr"]), momentum=float(opts["momentum"]),
        weight_decay=float(opts["weight_decay"]), batch=batch, lr_decay_at_half=False, seed=seed,
        dsa_strategy=default_strategy(dataset) if opts["dsa"] else None,
    )  # fmt: skip


def train_from(model: nn.Module, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
               opts: Mapping[str, Any], dataset: str, seed: int) -> tuple[torch.Tensor, float]:
    """Load `params`, train locally, return the new flat parameters and the last loss."""
    load_flat_params(model, params)
    loss = local_train(model, x, y, opts, dataset, seed)
    return flat_params(model), loss


def global_accuracy(model: nn.Module, params: torch.Tensor, data: Any, subset: int) -> float:
    """Accuracy of `params` on the test set (its first `subset` images when subset > 0)."""
    load_flat_params(model, params)
    n = subset if subset > 0 else len(data.dataset.test_x)
    return evaluate(model, data.dataset.test_x[:n], data.dataset.test_y[:n])


def weighted_average(vectors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum_k w_k v_k / sum_k w_k, accumulated in float64, returned as float32."""
    total = float(sum(weights))
    if not vectors or total <= 0:
        raise ValueError("weighted average of nothing")
    acc = torch.zeros_like(vectors[0], dtype=torch.float64)
    for v, w in zip(vectors, weights, strict=True):
        acc += v.to(torch.float64) * (float(w) / total)
    return acc.float()


class Server(Node):
    role = "server"

    def participants(self, rng: np.random.Generator) -> list[int]:
        """ceil(participation x K) clients drawn without replacement (at least one)."""
        frac = float(self.options["participation"])
        if not 0.0 < frac <= 1.0:
            raise DsimError(f"fedavg.participation must be in (0, 1], got {frac}")
        take = max(1, math.ceil(frac * len(self.clients) - 1e-9))
        return sorted(int(c) for c in rng.choice(self.clients, size=take, replace=False))

    async def collect(self, rnd: int, chosen: list[int], timeout: float) -> dict[int, Any]:
        """This round's updates; late updates of earlier rounds (from dropped clients) are discarded."""
        deadline = asyncio.get_running_loop().time() + timeout

        async def one(src: int) -> Any:
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise NodeTimeout(f"node {src} sent no update for round {rnd} within {timeout:g} s")
                payload = (await self.recv("update", src=src, timeout=left)).payload
                if payload["round"] == rnd:
                    return payload
                self.log_event("stale", src=src, round=payload["round"], expected=rnd)

        got = await asyncio.gather(*(one(s) for s in chosen), return_exceptions=True)
        out = {}
        for src, res in zip(chosen, got, strict=True):
            if isinstance(res, NodeTimeout):
                self.log_event("missing", kind="update", src=src, round=rnd)
            elif isinstance(res, BaseException):
                raise res
            else:
                out[src] = res
        return out

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        seed, rounds = int(self.config["seed"]), int(self.config["rounds"])
        model = build_shared_model(opts, data, seed)
        params = flat_params(model)
        rng = np.random.default_rng([seed, 0xFEDA])
        eval_every, subset = max(1, int(opts["eval_every"])), int(opts["test_subset"])
        history: list[dict[str, Any]] = []
        dropped: dict[str, list[int]] = {}
        for rnd in range(rounds):
            chosen = self.participants(rng)
            await self.broadcast("global", {"round": rnd, "params": params}, dsts=chosen)
            replies = await self.collect(rnd, chosen, float(opts["round_timeout"]))
            missing = sorted(set(chosen) - set(replies))
            if missing:
                dropped[str(rnd)] = missing
            if replies:
                params = weighted_average([r["params"] for r in replies.values()],
                                          [r["samples"] for r in replies.values()])
            entry: dict[str, Any] = {"round": rnd, "clients": len(replies),
                                     "loss": float(np.mean([r["loss"] for r in replies.values()] or [np.nan]))}
            if (rnd + 1) % eval_every == 0 or rnd == rounds - 1:
                entry["accuracy"] = await self.offload(global_accuracy, model, params, data, subset)
            self.log(**entry)
            history.append(entry)
        await self.broadcast("global", {"round": rounds, "stop": True}, dsts=self.clients)
        final = history[-1].get("accuracy") if history else await self.offload(
            global_accuracy, model, params, data, subset)
        return {
            "accuracy": final,
            "rounds": rounds,
            "model_params": param_count(model),
            "model_bytes": param_count(model) * 4,
            "history": history,
            "dropped": dropped,
            "model": spec_from_options(opts),
        }


class Client(Node):
    role = "client"

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        seed = int(self.config["seed"])
        model = build_shared_model(opts, data, seed)
        samples, sent, received, rounds_done = len(data.train_x), 0, 0, 0
        while True:
            msg = await self.recv("global", src=self.server, timeout=float(opts["round_timeout"]))
            received += msg.nbytes
            if msg.payload.get("stop"):
                break
            rnd = int(msg.payload["round"])
            params, loss = await self.offload(
                train_from, model, msg.payload["params"].clone(), data.train_x, data.train_y, opts,
                data.dataset.name, derive_seed(seed, self.rank, rnd),
            )
            sent += await self.send(self.server, "update",
                                    {"round": rnd, "params": params, "samples": samples, "loss": loss})
            rounds_done += 1
        return {"samples": samples, "rounds_trained": rounds_done, "bytes_sent": sent, "bytes_recv": received}


def summarize(results: Mapping[int, dict[str, Any]], graph: Any) -> dict[str, Any]:
    """The server's result plus per-client bytes (sent + received) and their mean."""
    server = graph.graph.get("server")
    out = dict(results.get(server) or {})
    per_client = {str(r): res["bytes_sent"] + res["bytes_recv"]
                  for r, res in sorted(results.items()) if r != server and res}
    out["bytes_per_client"] = per_client
    out["mean_bytes_per_client"] = float(np.mean(list(per_client.values()))) if per_client else 0.0
    return out


PROGRAM = Program(name="fedavg", roles={"server": Server, "client": Client}, needs_server=True,
                  uses_data=True, defaults=DEFAULTS, summarize=summarize)
