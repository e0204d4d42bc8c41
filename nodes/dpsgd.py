"""D-PSGD (Lian et al. 2017), decentralized: local training, then averaging with the neighbours.

Every round each node trains its model on its own data (`local_epochs` or `local_steps`), sends its
flat parameters to every neighbour, receives theirs and mixes them with Metropolis-Hastings weights
(doubly stochastic, so the network average is preserved). All traffic runs on graph edges only:
every node sends `rounds x degree` messages of kind "dpsgd" and relays nothing. All nodes start
from the same initial model (same seed), as in DecentralizePy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from msgspec import Meta

from dsim.lazy import lazy_import
from dsim.node import Node
from dsim.nodes.fedavg import LocalTrainingOptions, build_shared_model, global_accuracy, train_from
from dsim.program import Program
from dsim.topologies import metropolis_hastings_weights

torch = lazy_import("torch")
dsa = lazy_import("dsim.ml.dsa")
models = lazy_import("dsim.ml.models")


class DPSGDOptions(LocalTrainingOptions):
    """D-PSGD: local SGD, then Metropolis-Hastings averaging with the neighbours, every round."""

    round_timeout: Annotated[float, Meta(gt=0, description="seconds a node waits for its neighbours' parameters each round before mixing without the missing ones")] = 120.0


class Peer(Node):
    role = "peer"

    async def run(self) -> dict[str, Any]:
        opts, data = self.options, self.data
        seed, rounds = self.config.seed, self.config.rounds
        weights = metropolis_hastings_weights(self.graph)[self.rank]
        model = build_shared_model(opts, data, seed, self.device)
        params = models.flat_params(model)
        eval_every, subset = opts.eval_every, opts.test_subset
        accuracy, history = float("nan"), []
        for rnd in range(rounds):
            self.progress("round", rnd, rounds)
            params, loss = await self.offload(
                train_from, model, params, data.train_x, data.train_y, opts, data.dataset.name,
                dsa.derive_seed(seed, self.rank, rnd),
            )
            await self.broadcast("dpsgd", {"round": rnd, "params": params})
            got = await self.gather_round("dpsgd", rnd, timeout=opts.round_timeout)
            # A neighbour that is offline or lost its message: its weight stays with this node.
            mixed = params.to(torch.float64) * (1.0 - sum(weights[n] for n in got))
            for nbr, payload in got.items():
                mixed += payload["params"].to(self.device, torch.float64) * weights[nbr]
            params = mixed.float()
            entry: dict[str, Any] = {"round": rnd, "loss": loss, "neighbours_heard": len(got)}
            if (rnd + 1) % eval_every == 0 or rnd == rounds - 1:
                accuracy = entry["accuracy"] = await self.offload(global_accuracy, model, params, data, subset)
            entry["t"] = self.elapsed()
            self.log(**entry)
            history.append(entry)
        return {"accuracy": accuracy, "degree": len(self.neighbours), "samples": len(data.train_x),
                "rounds": rounds, "model_bytes": models.param_count(model) * 4, "model": opts.model_spec, "history": history}


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


PROGRAM = Program(name="dpsgd", roles={"peer": Peer}, uses_data=True, options=DPSGDOptions,
                  summarize=summarize)
