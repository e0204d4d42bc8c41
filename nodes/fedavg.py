"""FedAvg (McMahan et al.): the model-sharing baseline of the distilled-data paper's Table I.

Each of `rounds` rounds, the server draws a fraction `participation` of the clients (seeded rng),
sends them the global parameters as one flat float32 vector, each trains locally and answers with
its parameters and its number of training samples; the server averages them weighted by samples
and scores the global model on the test set. Every participating client therefore moves exactly
2 x model size per round (plus small headers), the figure the distilled-data paper compares with.
The helpers below (model building, local training) are shared with D-PSGD (dsim.nodes.dpsgd).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from msgspec import Meta

from dsim.lazy import lazy_import
from dsim.node import Node
from dsim.nodes.options import ModelOptions
from dsim.program import Program

torch = lazy_import("torch")
dsa = lazy_import("dsim.ml.dsa")
models = lazy_import("dsim.ml.models")
evaluate = lazy_import("dsim.ml.evaluate")
train = lazy_import("dsim.ml.train")


class LocalTrainingOptions(ModelOptions):
    """Local SGD of the model-sharing baselines (FedAvg, D-PSGD)."""

    local_epochs: Annotated[int, Meta(ge=0, description="passes over the local data per round (ignored when local_steps > 0)")] = 1
    local_steps: Annotated[int, Meta(ge=0, description="if > 0: exactly this many SGD minibatch steps per round instead of epochs")] = 0
    lr: Annotated[float, Meta(gt=0, description="local SGD learning rate")] = 0.01
    momentum: Annotated[float, Meta(ge=0, lt=1, description="local SGD momentum; the buffer starts afresh every round")] = 0.9
    weight_decay: Annotated[float, Meta(ge=0, description="local SGD weight decay")] = 5e-4
    batch: Annotated[int, Meta(ge=1, description="local minibatch size")] = 64
    dsa: Annotated[bool, Meta(description="DSA augmentation on local batches")] = False
    eval_every: Annotated[int, Meta(ge=1, description="score the model every k rounds (and always after the last)")] = 1
    test_subset: Annotated[int, Meta(ge=0, description="score on the first n test images (0 = the whole test set)")] = 0

    def __post_init__(self) -> None:
        if self.local_steps == 0 and self.local_epochs == 0:
            raise ValueError("need local_steps > 0 or local_epochs > 0")
        if self.model == "convnet_bn":  # only parameters are averaged: running stats would stay local
            raise ValueError("model 'convnet_bn' keeps buffers (batchnorm); parameter averaging needs a model "
                             "without them, e.g. 'convnet' (instance norm)")


class FedAvgOptions(LocalTrainingOptions):
    """FedAvg: server-drawn participants train locally; the server averages weighted by samples."""

    participation: Annotated[float, Meta(gt=0, le=1, description="fraction of the clients drawn (seeded) for each round")] = 1.0
    round_timeout: Annotated[float, Meta(gt=0, description="seconds the server waits for a client's update before going on")] = 1800.0


def build_shared_model(opts: ModelOptions, data: Any, seed: int, device: str) -> torch.nn.Module:
    """The model every node starts from: same spec and seed everywhere, so same initial weights."""
    ds = data.dataset
    return models.build_model(opts.model_spec, ds.image_shape[0], ds.num_classes, ds.image_shape[-1],
                              dsa.derive_seed(seed, 0x5EED), device=device)


def local_train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, opts: LocalTrainingOptions,
                dataset: str, seed: int) -> float:
    """Train in place for `local_epochs` epochs, or exactly `local_steps` minibatch steps.

    Steps are run as one epoch over `local_steps x batch` samples drawn (seeded) from the local
    data, repeating it when it is smaller. The lr stays constant (no decay inside a round).
    """
    batch, steps, epochs = opts.batch, opts.local_steps, opts.local_epochs
    if steps > 0:
        gen = torch.Generator().manual_seed(seed)
        need = steps * batch
        order = torch.randperm(len(x), generator=gen).repeat(-(-need // len(x)))[:need]
        x, y, epochs = x[order], y[order], 1
    return train.train_model(
        model, x, y, epochs=epochs, lr=opts.lr, momentum=opts.momentum,
        weight_decay=opts.weight_decay, batch=batch, lr_decay_at_half=False, seed=seed,
        dsa_strategy=dsa.default_strategy(dataset) if opts.dsa else None,
    )  # fmt: skip


def train_from(model: torch.nn.Module, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
               opts: LocalTrainingOptions, dataset: str, seed: int) -> tuple[torch.Tensor, float]:
    """Load `params`, train locally, return the new flat parameters and the last loss."""
    models.load_flat_params(model, params)
    loss = local_train(model, x, y, opts, dataset, seed)
    return models.flat_params(model), loss


def global_accuracy(model: torch.nn.Module, params: torch.Tensor, data: Any, subset: int) -> float:
    """Accuracy of `params` on the test set (its first `subset` images when subset > 0)."""
    models.load_flat_params(model, params)
    n = subset if subset > 0 else len(data.dataset.test_x)
    return evaluate.evaluate(model, data.dataset.test_x[:n], data.dataset.test_y[:n])


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
        frac = self.options.participation
        take = max(1, math.ceil(frac * len(self.clients) - 1e-9))
        return sorted(int(c) for c in rng.choice(self.clients, size=take, replace=False))

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        seed, rounds = self.config.seed, self.config.rounds
        model = build_shared_model(opts, data, seed, self.device)
        params = models.flat_params(model)
        rng = np.random.default_rng([seed, 0xFEDA])
        eval_every, subset = opts.eval_every, opts.test_subset
        history: list[dict[str, Any]] = []
        dropped: dict[str, list[int]] = {}
        for rnd in range(rounds):
            self.progress("round", rnd, rounds)
            chosen = self.participants(rng)
            await self.broadcast("global", {"round": rnd, "params": params}, dsts=chosen)
            replies = await self.gather_round("update", rnd, chosen, timeout=opts.round_timeout)
            missing = sorted(set(chosen) - set(replies))
            if missing:
                dropped[str(rnd)] = missing
            if replies:
                params = weighted_average([r["params"].to(self.device) for r in replies.values()],
                                          [r["samples"] for r in replies.values()])
            entry: dict[str, Any] = {"round": rnd, "clients": len(replies),
                                     "loss": float(np.mean([r["loss"] for r in replies.values()] or [np.nan]))}
            if (rnd + 1) % eval_every == 0 or rnd == rounds - 1:
                entry["accuracy"] = await self.offload(global_accuracy, model, params, data, subset)
            entry["t"] = self.elapsed()
            self.log(**entry)
            history.append(entry)
        await self.broadcast("global", {"round": rounds, "stop": True}, dsts=self.clients)
        final = history[-1].get("accuracy") if history else await self.offload(
            global_accuracy, model, params, data, subset)
        return {
            "accuracy": final,
            "rounds": rounds,
            "model_params": models.param_count(model),
            "model_bytes": models.param_count(model) * 4,
            "history": history,
            "dropped": dropped,
            "model": opts.model_spec,
        }


class Client(Node):
    role = "client"

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        seed = self.config.seed
        model = build_shared_model(opts, data, seed, self.device)
        samples, sent, received, rounds_done = len(data.train_x), 0, 0, 0
        while True:
            msg = await self.recv("global", src=self.server, timeout=opts.round_timeout)
            received += msg.nbytes
            if msg.payload.get("stop"):
                break
            rnd = msg.payload["round"]
            self.progress("round", rnd, self.config.rounds)
            params, loss = await self.offload(
                train_from, model, msg.payload["params"].to(self.device, copy=True), data.train_x, data.train_y, opts,
                data.dataset.name, dsa.derive_seed(seed, self.rank, rnd),
            )
            sent += await self.send(self.server, "update",
                                    {"round": rnd, "params": params, "samples": samples, "loss": loss})
            rounds_done += 1
        return {"samples": samples, "rounds_trained": rounds_done, "bytes_sent": sent, "bytes_recv": received}


def summarize(results: dict[int, dict[str, Any]], graph: Any) -> dict[str, Any]:
    """The server's result plus per-client bytes (sent + received) and their mean."""
    server = graph.graph.get("server")
    out = dict(results.get(server) or {})
    per_client = {str(r): res["bytes_sent"] + res["bytes_recv"]
                  for r, res in sorted(results.items()) if r != server and res}
    out["bytes_per_client"] = per_client
    out["mean_bytes_per_client"] = float(np.mean(list(per_client.values()))) if per_client else 0.0
    return out


PROGRAM = Program(name="fedavg", roles={"server": Server, "client": Client}, needs_server=True,
                  uses_data=True, options=FedAvgOptions, summarize=summarize)
