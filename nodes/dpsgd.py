"""D-PSGD (Lian et al. 2017), decentralized: local training, then averaging with the neighbours.

Every round each node trains its model on its own data (`local_epochs` or `local_steps`), sends its
flat parameters to every neighbour, receives theirs and mixes them with Metropolis-Hastings weights
(doubly stochastic, so the network average is preserved). All traffic runs on graph edges only:
every node sends `rounds x degree` messages of kind "dpsgd" and relays nothing. All nodes start
from the same initial model (same seed), as in DecentralizePy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dsim.ml.dsa import derive_seed
from dsim.ml.models import flat_params, param_count, spec_from_options
from dsim.node import Node
from dsim.nodes.fedavg import build_shared_model, global_accuracy, train_from
from dsim.program import Program
from dsim.topologies import metropolis_hastings_weights

DEFAULTS: dict[str, Any] = {
    "local_epochs": 1,  # passes over the local data per round (ignored when local_steps > 0)
    "local_steps": 0,  # if > 0: exactly this many SGD minibatch steps per round
    "lr": 0.01,
    "momentum": 0.9,  # local SGD momentum, reset every round
    "weight_decay": 5e-4,
    "batch": 64,
    "model": "convnet",
    "width": 0,  # conv channels; 0 keeps the preset's (128)
    "dsa": False,
    "eval_every": 1,  # score on the test set every k rounds (and always after the last)
    "test_subset": 0,  # first n test images (0 = all): every node scores, so keep it small on CPU
}


class Peer(Node):
    role = "peer"

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        seed, rounds = int(self.config["seed"]), int(self.config["rounds"])
        weights = metropolis_hastings_weights(self.graph)[self.rank]
        model = build_shared_model(opts, data, seed)
        params = flat_params(model)
        eval_every, subset = max(1, int(opts["eval_every"])), int(opts["test_subset"])
        accuracy, history = float("nan"), []
        for rnd in range(rounds):
            params, loss = await self.offload(
                train_from, model, params, data.train_x, data.train_y, opts, data.dataset.name,
                derive_seed(seed, self.rank, rnd),
            )
            await self.broadcast("dpsgd", {"round": rnd, "params": params})
            mixed = params.to(torch.float64) * weights[self.rank]
            for nbr in self.neighbours:
                msg = await self.recv("dpsgd", src=nbr)
                if msg.payload["round"] != rnd:
                    raise RuntimeError(f"node {self.rank} got round {msg.payload['round']} from {nbr} in round {rnd}")
                mixed += msg.payload["params"].to(torch.float64) * weights[nbr]
            params = mixed.float()
            entry: dict[str, Any] = {"round": rnd, "loss": loss}
            if (rnd + 1) % eval_every == 0 or rnd == rounds - 1:
                accuracy = entry["accuracy"] = await self.offload(global_accuracy, model, params, data, subset)
            self.log(**entry)
            history.append(entry)
        return {"accuracy": accuracy, "degree": len(self.neighbours), "samples": len(data.train_x),
                "rounds": rounds, "model_bytes": param_count(model) * 4, "model": spec_from_options(opts), "history": history}


def summarize(results: Mapping[int, dict[str, Any]], graph: Any) -> dict[str, Any]:
    """Each node's final test accuracy, their mean / min / max, and the model size."""
    acc = {str(r): res["accuracy"] for r, res in sorted(results.items()) if res}
    values = list(acc.values())
    any_result = next((res for res in results.values() if res), {})
    return {
        "accuracy_mean": float(np.mean(values)) if values else float("nan"),
        "accuracy_min": min(values, default=float("nan")),
        "accuracy_max": max(values, default=float("nan")),
        "accuracy_per_node": acc,
        "rounds": any_result.get("rounds", 0),
        "model_bytes": any_result.get("model_bytes", 0),
    }


PROGRAM = Program(name="dpsgd", roles={"peer": Peer}, uses_data=True, defaults=DEFAULTS,
                  summarize=summarize)
