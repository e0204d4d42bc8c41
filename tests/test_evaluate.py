"""Training on tensors and scoring synthetic sets with fresh ConvNets."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsim.errors import DsimError
from dsim.ml.dsa import default_strategy
from dsim.ml.evaluate import evaluate, evaluate_synthetic
from dsim.ml.models import build_model, flat_params
from dsim.ml.pae import pack
from dsim.ml.train import train_model

torch.set_num_threads(1)

MODEL = {"width": 16}
SIZE = 8
CLASSES = 4


def make_data(per_class: int, seed: int):
    """Easy 4-class data: a smooth random prototype per class plus noise."""
    coarse = torch.randn(CLASSES, 1, 4, 4, generator=torch.Generator().manual_seed(99))
    protos = 2 * F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    y = torch.arange(CLASSES).repeat_interleave(per_class)
    noise = torch.randn(len(y), 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return protos[y] + 0.5 * noise, y


def test_train_model_fits_and_evaluate_scores_in_unit_range():
    x, y = make_data(16, seed=1)
    net = build_model(MODEL, 1, CLASSES, SIZE, seed=0)
    state = torch.get_rng_state()
    epochs_seen = []
    loss = train_model(
        net, x, y, epochs=20, batch=16, seed=3, on_epoch=lambda e, m: epochs_seen.append(e)
    )
    assert torch.equal(torch.get_rng_state(), state)
    assert epochs_seen == list(range(1, 21))
    assert loss < 0.5
    net.train()
    acc = evaluate(net, x, y, batch=7)
    assert net.training  # mode restored
    assert 0.9 <= acc <= 1.0


def test_train_model_is_reproducible_from_its_seed():
    x, y = make_data(8, seed=2)
    nets = [build_model(MODEL, 1, CLASSES, SIZE, seed=0) for _ in range(3)]
    strategy = default_strategy("digits")
    for net, seed in zip(nets, (5, 5, 6), strict=True):
        train_model(net, x, y, epochs=3, batch=8, dsa_strategy=strategy, seed=seed)
    assert torch.equal(flat_params(nets[0]), flat_params(nets[1]))
    assert not torch.equal(flat_params(nets[0]), flat_params(nets[2]))


def test_evaluate_synthetic_beats_chance_clearly_on_easy_data():
    syn_x, syn_y = make_data(5, seed=3)
    test_x, test_y = make_data(50, seed=4)
    kwargs = {
        "num_models": 2, "epochs": 40, "model": MODEL, "seed": 1, "batch": 256,
        "dsa_strategy": default_strategy("digits"),
    }  # fmt: skip
    score = evaluate_synthetic(syn_x, syn_y, test_x, test_y, **kwargs)
    assert set(score) == {"mean", "std", "accuracies"}
    assert len(score["accuracies"]) == 2
    assert score["mean"] > 0.7  # chance is 0.25
    assert score == evaluate_synthetic(syn_x, syn_y, test_x, test_y, **kwargs)
    # barely trained models disagree: mean and population std of the accuracies, recomputed
    short = evaluate_synthetic(syn_x, syn_y, test_x, test_y, **(kwargs | {"num_models": 3, "epochs": 2}))
    for result in (score, short):
        accuracies = np.array(result["accuracies"])
        assert np.allclose(accuracies * len(test_y), np.round(accuracies * len(test_y)))  # k / 200
        assert result["mean"] == pytest.approx(accuracies.mean(), abs=1e-12)
        assert result["std"] == pytest.approx(accuracies.std(), abs=1e-12)  # np.std: ddof 0
    assert len(set(short["accuracies"])) > 1 and short["std"] > 0


def test_evaluate_synthetic_expands_pae_sets_and_rejects_bad_shapes():
    real_x, real_y = make_data(8, seed=5)
    test_x, test_y = make_data(20, seed=6)
    packed = torch.cat([pack(real_x[real_y == c], 2) for c in range(CLASSES)])  # 2 per class
    packed_y = torch.arange(CLASSES).repeat_interleave(2)
    score = evaluate_synthetic(
        packed, packed_y, test_x, test_y, num_models=1, epochs=2, model=MODEL, pae_factor=2
    )
    assert 0.0 <= score["mean"] <= 1.0 and score["std"] == 0.0
    with pytest.raises(DsimError):
        evaluate_synthetic(packed, packed_y, test_x[:, :, :4, :4], test_y, num_models=1, epochs=1)
