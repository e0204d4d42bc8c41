"""Matching Training Trajectories: expert buffers, the unrolled matching loss, distillation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsim.errors import DsimError
from dsim.ml.dm import init_from_real
from dsim.ml.dsa import derive_seed
from dsim.ml.evaluate import evaluate_synthetic
from dsim.ml.models import build_model, flat_params
from dsim.ml.mtt import (
    Trajectory,
    distill_mtt,
    load_experts,
    matching_loss,
    student_net,
    train_experts,
)

torch.set_num_threads(1)

MODEL = {"width": 16}
STRATEGY = "color_crop_cutout_scale_rotate"
SIZE, CLASSES, EPOCHS = 8, 4, 4


def make_data(per_class: int, seed: int, noise: float = 3.0):
    """Class-conditional 8x8 data: a fixed smooth prototype per class plus strong pixel noise.

    With noise 3 one real image per class is a poor training set (~75% accuracy), while an
    image near the class mean is a good one: room for distillation to show.
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(CLASSES, 1, 4, 4, generator=torch.Generator().manual_seed(99))
    protos = 2 * F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    y = torch.arange(CLASSES).repeat_interleave(per_class)
    return protos[y] + noise * torch.randn(len(y), 1, SIZE, SIZE, generator=gen), y


@pytest.fixture(scope="module")
def data():
    return make_data(100, seed=0)


@pytest.fixture(scope="module")
def experts(data):
    x, y = data
    calls = []
    trajectories = train_experts(
        x, y, num_experts=3, epochs=EPOCHS, num_classes=CLASSES, model=MODEL, batch=32,
        seed=0, progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    return trajectories, calls


def test_experts_record_init_and_every_epoch_and_keep_moving(experts):
    trajectories, calls = experts
    assert len(trajectories) == 3
    assert calls == [(i, 3 * EPOCHS) for i in range(1, 3 * EPOCHS + 1)]
    for k, traj in enumerate(trajectories):
        assert len(traj) == EPOCHS + 1
        init = build_model(MODEL, 1, CLASSES, SIZE, derive_seed(0, k, 1))
        assert torch.equal(traj.epoch(0), flat_params(init))
        for t in range(EPOCHS):
            assert traj.epoch(t).dtype == torch.float32
            assert float((traj.epoch(t + 1) - traj.epoch(t)).norm()) > 1e-3
    assert not torch.equal(trajectories[0].epoch(EPOCHS), trajectories[1].epoch(EPOCHS))
    with pytest.raises(IndexError):
        trajectories[0].epoch(EPOCHS + 1)


def test_store_dir_round_trip_is_memory_mapped_and_equal(tmp_path, data):
    x, y = data
    kw = {"num_experts": 2, "epochs": 2, "num_classes": CLASSES, "model": MODEL, "batch": 64}
    in_memory = train_experts(x, y, **kw, seed=7)
    on_disk = train_experts(x, y, **kw, seed=7, store_dir=tmp_path / "buf")
    assert sorted(p.name for p in (tmp_path / "buf").iterdir()) == [
        "expert_0000.npy",
        "expert_0001.npy",
    ]
    reloaded = load_experts(tmp_path / "buf")
    for mem, disk, again in zip(in_memory, on_disk, reloaded, strict=True):
        assert isinstance(disk.params, np.memmap) and isinstance(again.params, np.memmap)
        assert len(disk) == len(again) == 3
        for t in range(3):
            assert torch.equal(mem.epoch(t), disk.epoch(t))
            assert torch.equal(mem.epoch(t), again.epoch(t))
    np.save(tmp_path / "bad.npy", np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(DsimError, match="not an expert trajectory"):
        Trajectory.load(tmp_path / "bad.npy")
    with pytest.raises(DsimError, match="no expert trajectories"):
        load_experts(tmp_path)


@pytest.mark.parametrize("batch_syn", [None, 3])
def test_matching_loss_reaches_pixels_and_lr(experts, data, batch_syn):
    trajectories, _ = experts
    x, y = data
    images, labels = init_from_real(x, y, 2, seed=1)
    images.requires_grad_(True)
    lr = torch.tensor(0.01, requires_grad=True)
    net = student_net(MODEL, 1, CLASSES, SIZE)
    traj = trajectories[0]
    loss = matching_loss(
        net, images, labels, lr, traj.epoch(1), traj.epoch(3), syn_steps=5,
        batch_syn=batch_syn, dsa_strategy=STRATEGY, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    loss.backward()
    assert torch.isfinite(loss) and 0 < float(loss.detach()) < 2
    assert torch.isfinite(images.grad).all() and float(images.grad.abs().sum()) > 0
    assert images.grad.abs().flatten(1).sum(1).gt(0).all()  # every image contributed
    assert float(lr.grad) != 0 and np.isfinite(float(lr.grad))


def test_matching_loss_lr_gradient_matches_finite_differences(experts, data):
    """The unroll is one differentiable expression: d loss / d lr agrees with a central difference,
    and lr = 0 leaves the student at its start (loss exactly 1)."""
    trajectories, _ = experts
    x, y = data
    images, labels = init_from_real(x, y, 1, seed=2)
    net = student_net(MODEL, 1, CLASSES, SIZE)
    net.module.double()
    start, target = trajectories[1].epoch(0).double(), trajectories[1].epoch(2).double()

    def loss_at(value: float, grad: bool = False) -> tuple[float, float]:
        lr = torch.tensor(value, dtype=torch.float64, requires_grad=grad)
        loss = matching_loss(net, images.double(), labels, lr, start, target, syn_steps=4)
        if grad:
            loss.backward()
            return float(loss.detach()), float(lr.grad)
        return float(loss.detach()), 0.0

    assert loss_at(0.0)[0] == pytest.approx(1.0, abs=1e-12)
    _, analytic = loss_at(0.05, grad=True)
    h = 1e-5
    numeric = (loss_at(0.05 + h)[0] - loss_at(0.05 - h)[0]) / (2 * h)
    assert analytic == pytest.approx(numeric, rel=1e-4) and analytic != 0


def _heldout_matching(images, labels, lr, trajectories) -> float:
    """Matching loss over every expert and start epoch, no augmentation (a fixed criterion)."""
    net = student_net(MODEL, 1, CLASSES, SIZE)
    total = 0.0
    with torch.enable_grad():
        for traj in trajectories:
            for t in range(2):
                loss = matching_loss(
                    net, images, labels, torch.tensor(lr), traj.epoch(t), traj.epoch(t + 2),
                    syn_steps=10, generator=torch.Generator().manual_seed(t),
                )  # fmt: skip
                total += float(loss.detach())
    return total


def test_distillation_lowers_the_matching_loss_and_beats_random_real_images(experts, data):
    trajectories, _ = experts
    x, y = data
    val_x, val_y = make_data(200, seed=1)
    rng_before = torch.random.get_rng_state()
    result = distill_mtt(
        x, y, trajectories, ipc=1, iterations=30, num_classes=CLASSES, model=MODEL,
        syn_steps=10, lr_img=100.0, seed=0,
    )  # fmt: skip
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # only local generators
    assert len(result.history) == 30 and result.best_iteration == 30
    assert np.isnan(result.best_accuracy) and result.initial_accuracy is None
    assert [h["iteration"] for h in result.history] == list(range(1, 31))
    base_x, base_y = init_from_real(x, y, 1, derive_seed(0, -2))  # the documented initial set
    assert torch.equal(result.labels, base_y) and result.images.shape == base_x.shape
    before = _heldout_matching(base_x, base_y, 0.01, trajectories)
    after = _heldout_matching(result.images, result.labels, result.lr, trajectories)
    assert after < 0.8 * before

    def score(images, labels, lr):
        return evaluate_synthetic(
            images, labels, val_x, val_y, num_models=3, epochs=60, model=MODEL, seed=5, lr=lr,
            dsa_strategy=None, num_classes=CLASSES,
        )["mean"]  # fmt: skip

    base, distilled = score(base_x, base_y, 0.01), score(result.images, result.labels, result.lr)
    assert distilled > base + 0.05, (base, distilled)


def test_eval_keeps_the_best_scored_copy_and_runs_are_deterministic(experts, data):
    trajectories, _ = experts
    x, y = data
    val_x, val_y = make_data(30, seed=2)
    kw = {
        "ipc": 1, "iterations": 4, "num_classes": CLASSES, "model": MODEL, "syn_steps": 3,
        "max_start_epoch": 3, "dsa_strategy": STRATEGY, "eval_every": 3, "val_x": val_x,
        "val_y": val_y, "eval_epochs": 5, "lr_img": 1000.0, "lr_lr": 1e-3,
    }  # fmt: skip
    seen = []
    first = distill_mtt(x, y, trajectories, seed=3, progress=seen.append, **kw)
    second = distill_mtt(x, y, trajectories, seed=3, **kw)
    other = distill_mtt(x, y, trajectories, seed=4, **kw)
    assert seen == first.history
    assert [h["iteration"] for h in first.history if "val_accuracy" in h] == [3, 4]
    assert torch.equal(first.images, second.images) and first.history == second.history
    assert first.lr == second.lr and first.best_accuracy == second.best_accuracy
    assert not torch.equal(first.images, other.images)
    scores = {0: first.initial_accuracy} | {
        h["iteration"]: h["val_accuracy"] for h in first.history if "val_accuracy" in h
    }
    assert first.best_accuracy == max(scores.values())
    assert scores[first.best_iteration] == first.best_accuracy
    rescored = evaluate_synthetic(
        first.images, first.labels, val_x, val_y, num_models=1, epochs=5, model=MODEL,
        seed=derive_seed(3, -3), lr=first.lr, dsa_strategy=STRATEGY, num_classes=CLASSES,
    )  # fmt: skip
    assert rescored["mean"] == first.best_accuracy  # the returned images are the scored copy
    assert len({h["lr"] for h in first.history}) > 1  # alpha is trained


def test_bad_requests_are_refused_in_one_line(experts, data):
    trajectories, _ = experts
    x, y = data
    kw = {"ipc": 1, "iterations": 1, "num_classes": CLASSES, "model": MODEL}
    with pytest.raises(DsimError, match="batchnorm"):
        train_experts(x, y, num_experts=1, epochs=1, num_classes=CLASSES, model="convnet_bn")
    with pytest.raises(DsimError, match="batchnorm"):
        distill_mtt(x, y, trajectories, **(kw | {"model": {"name": "convnet_bn", "width": 16}}))
    with pytest.raises(DsimError, match="needs 5"):
        distill_mtt(x, y, trajectories, max_start_epoch=4, expert_epochs=2, **kw)
    with pytest.raises(DsimError, match="validation set"):
        distill_mtt(x, y, trajectories, eval_every=1, **kw)
    with pytest.raises(DsimError, match="parameters"):
        distill_mtt(x, y, trajectories, **(kw | {"model": {"width": 8}}))
    with pytest.raises(DsimError, match="at least one expert"):
        distill_mtt(x, y, [], **kw)
    with pytest.raises(DsimError, match=r"labels must lie in \[0, 3\)"):
        distill_mtt(x, y, trajectories, **(kw | {"num_classes": 3}))
