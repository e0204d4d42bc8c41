"""Distribution matching, partition-and-expand and the CollabDM client/server pieces."""

import pytest
import torch
import torch.nn.functional as F

from dsim.errors import DsimError
from dsim.ml.dm import (
    aggregate_client_means,
    class_counts,
    client_mean_embeddings,
    collab_objective,
    distill_dm,
    dm_loss,
    dm_loss_per_class,
    frozen_net,
    init_from_real,
    server_refine,
)
from dsim.ml.dsa import augment, derive_seed
from dsim.ml.pae import expand, pack

torch.set_num_threads(1)

MODEL = {"width": 16}
STRATEGY = "color_crop_cutout_scale_rotate"
SIZE = 8


def make_data(per_class: int, classes: int = 3, seed: int = 0, channels: int = 1):
    """Class-conditional data: a fixed smooth random prototype per class plus noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(classes, channels, 4, 4, generator=torch.Generator().manual_seed(99))
    protos = 2 * F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    y = torch.arange(classes).repeat_interleave(per_class)
    x = protos[y] + 0.5 * torch.randn(len(y), channels, SIZE, SIZE, generator=gen)
    return x, y


def heldout_dm_loss(syn_x, syn_y, real_x, real_y, seeds=range(100, 106)) -> float:
    """DM objective of a synthetic set over fixed networks not used in training, no augmentation."""
    classes = sorted(set(syn_y.tolist()))
    total = 0.0
    for seed in seeds:
        net = frozen_net(MODEL, real_x.shape[1], 3, SIZE, seed)
        parts_r = [real_x[real_y == c] for c in classes]
        parts_s = [syn_x[syn_y == c] for c in classes]
        with torch.no_grad():
            total += float(dm_loss(net, parts_r, parts_s, [0] * len(classes), None))
    return total


# ------------------------------------------------------------------ partition and expand


def test_expand_splits_blocks_block_major_and_tiles_labels():
    quadrants = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # block (i, j) holds value 2i + j + 1
    img = quadrants.repeat_interleave(4, 0).repeat_interleave(4, 1)[None, None]  # 1x1x8x8
    images = torch.cat([img, 10 * img])
    labels = torch.tensor([5, 7])
    out, out_labels = expand(images, labels, 2)
    assert out.shape == (8, 1, 8, 8)
    assert out_labels.tolist() == [5, 7, 5, 7, 5, 7, 5, 7]
    expected = [1, 10, 2, 20, 3, 30, 4, 40]  # block 0 of each image, then block 1, ...
    assert torch.allclose(
        out, torch.tensor(expected, dtype=torch.float).view(8, 1, 1, 1).expand_as(out)
    )


def test_pack_is_the_inverse_layout_of_expand_and_expand_is_differentiable():
    consts = torch.arange(8, dtype=torch.float).view(8, 1, 1, 1).expand(8, 2, 8, 8).contiguous()
    packed = pack(consts, 2)
    assert packed.shape == (2, 2, 8, 8)
    back, _ = expand(packed, torch.zeros(2, dtype=torch.long), 2)
    assert torch.allclose(back, consts)
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    out, labels = expand(x, torch.tensor([0, 1, 2]), 2)
    assert labels.tolist() == [0, 1, 2] * 4
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(DsimError):
        expand(torch.randn(1, 1, 9, 9), torch.tensor([0]), 2)


# ------------------------------------------------------------------ initialisation


def test_init_from_real_picks_real_images_per_class_and_skips_absent_classes():
    x, y = make_data(5)
    keep = y != 1  # class 1 absent
    x, y = x[keep], y[keep]
    syn_x, syn_y = init_from_real(x, y, ipc=7, seed=3)  # 7 > 5 images: reuses images
    assert syn_y.tolist() == [0] * 7 + [2] * 7
    for img, lab in zip(syn_x, syn_y, strict=True):
        assert any(torch.equal(img, r) for r in x[y == lab])
    again_x, _ = init_from_real(x, y, ipc=7, seed=3)
    assert torch.equal(syn_x, again_x)
    pae_x, pae_y = init_from_real(x, y, ipc=2, seed=3, pae_factor=2)
    assert pae_x.shape == (4, 1, SIZE, SIZE) and pae_y.tolist() == [0, 0, 2, 2]


# ------------------------------------------------------------------ DM


def test_batched_dm_loss_and_gradient_equal_the_per_class_loop():
    """Same network and augmentation: identical maths. In float64, because in float32 rounding
    differences can flip a ReLU near zero and move single pixel gradients by ~1%."""
    real_x, real_y = make_data(20, seed=1)
    real_x = real_x.double()
    syn_x, syn_y = init_from_real(real_x, real_y, ipc=4, seed=2)
    net = frozen_net(MODEL, 1, 3, SIZE, seed=11).double()
    seeds = [derive_seed(11, c) for c in range(3)]
    real_parts = [real_x[real_y == c] for c in range(3)]
    for match_std, factor in ((False, None), (True, 2)):
        grads, losses = [], []
        for fn, kwargs in ((dm_loss, {"chunk": 5}), (dm_loss, {}), (dm_loss_per_class, {})):
            syn = syn_x.clone().requires_grad_(True)
            parts = [syn[syn_y == c] for c in range(3)]
            if factor:
                parts = [expand(p, torch.zeros(len(p), dtype=torch.long), factor)[0] for p in parts]
            loss = fn(net, real_parts, parts, seeds, STRATEGY, match_std=match_std, **kwargs)
            loss.backward()
            losses.append(loss.detach())
            grads.append(syn.grad)
        assert losses[0] > 0
        for loss, grad in zip(losses[:2], grads[:2], strict=True):
            assert torch.allclose(loss, losses[2], rtol=1e-10, atol=0)
            assert torch.allclose(grad, grads[2], rtol=1e-8, atol=1e-12)


def test_distill_dm_lowers_the_matching_loss_and_is_deterministic():
    real_x, real_y = make_data(40, seed=4)
    init_x = torch.randn(9, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    init_y = torch.arange(3).repeat_interleave(3)
    seen = []
    kwargs = {"iterations": 30, "batch_real": 32, "model": MODEL, "dsa_strategy": STRATEGY}
    out = distill_dm(
        init_x, init_y, real_x, real_y, seed=7, progress=lambda i, v: seen.append(v), **kwargs
    )
    assert len(seen) == 30 and out.shape == init_x.shape
    before = heldout_dm_loss(init_x, init_y, real_x, real_y)
    after = heldout_dm_loss(out, init_y, real_x, real_y)
    assert after < 0.3 * before
    assert sum(seen[-5:]) < sum(seen[:5])
    assert torch.equal(out, distill_dm(init_x, init_y, real_x, real_y, seed=7, **kwargs))
    assert not torch.equal(out, distill_dm(init_x, init_y, real_x, real_y, seed=8, **kwargs))


def test_distill_dm_matches_the_per_class_loop_and_supports_pae_with_std():
    real_x, real_y = make_data(30, seed=6)
    syn_x, syn_y = init_from_real(real_x, real_y, ipc=2, seed=1, pae_factor=2)
    kwargs = {
        "iterations": 3, "batch_real": 16, "model": MODEL, "dsa_strategy": STRATEGY,
        "seed": 3, "pae_factor": 2, "match_std": True,
    }  # fmt: skip
    batched = distill_dm(syn_x, syn_y, real_x, real_y, **kwargs)
    looped = distill_dm(syn_x, syn_y, real_x, real_y, per_class_loop=True, **kwargs)
    assert not torch.equal(batched, syn_x)
    update = (looped - syn_x).abs().max()
    assert (batched - looped).abs().max() <= 1e-2 * update  # float32 rounding only


def test_distill_dm_leaves_classes_without_real_data_alone():
    real_x, real_y = make_data(20, seed=8)
    keep = real_y != 2
    init_x = torch.randn(6, 1, SIZE, SIZE)
    init_y = torch.arange(3).repeat_interleave(2)
    out = distill_dm(
        init_x, init_y, real_x[keep], real_y[keep], iterations=2, batch_real=8, model=MODEL,
        num_classes=3, seed=0,
    )  # fmt: skip
    assert torch.equal(out[4:], init_x[4:])
    assert not torch.equal(out[:4], init_x[:4])


# ------------------------------------------------------------------ CollabDM


def test_client_means_follow_the_seed_and_class_augmentation_contract():
    real_x, real_y = make_data(12, seed=9)
    keep = real_y != 1
    real_x, real_y = real_x[keep], real_y[keep]
    seeds = [5, 17]
    kwargs = {"batch": 64, "model": MODEL, "dsa_strategy": STRATEGY}  # batch >= class size
    means = client_mean_embeddings(real_x, real_y, seeds, 3, **kwargs)
    assert means.shape == (2, 3, 64)  # width 16 x 2 x 2
    assert torch.equal(means[:, 1], torch.zeros(2, 64))  # absent class: zero row
    assert class_counts(real_y, 3).tolist() == [12, 0, 12]
    for t, seed in enumerate(seeds):
        net = frozen_net(MODEL, 1, 3, SIZE, seed)
        for c in (0, 2):
            with torch.no_grad():
                expected = net.embed(augment(real_x[real_y == c], STRATEGY, derive_seed(seed, c)))
            assert torch.allclose(means[t, c], expected.mean(0), atol=1e-5)
    assert torch.equal(means, client_mean_embeddings(real_x, real_y, seeds, 3, **kwargs))


def test_server_reproduces_client_augmentation_exactly():
    """A server holding the client's very images sees zero loss: same nets, same DSA per class."""
    real_x, real_y = make_data(6, seed=10)
    seeds = [1, 2, 3]
    means = client_mean_embeddings(real_x, real_y, seeds, 3, batch=6, model=MODEL)
    targets = [(s, means[t]) for t, s in enumerate(seeds)]  # list form of the targets
    assert collab_objective(real_x, real_y, targets, num_classes=3, model=MODEL) < 1e-8


def test_aggregate_client_means_averages_over_clients_having_the_class():
    a = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    b = torch.tensor([[3.0, 3.0], [0.0, 0.0], [0.0, 0.0]])
    target, present = aggregate_client_means(
        [a, b], [torch.tensor([4, 5, 0]), torch.tensor([1, 0, 0])]
    )
    assert target.tolist() == [[2.0, 2.0], [2.0, 2.0], [0.0, 0.0]]
    assert present.tolist() == [True, True, False]


def test_server_refine_reduces_the_collabdm_loss_and_skips_missing_classes():
    seeds = [21, 22, 23, 24, 25, 26]
    clients = [make_data(20, seed=s) for s in (11, 12)]
    targets, present = {}, {}
    for seed in seeds:
        per_client = [
            client_mean_embeddings(x, y, [seed], 3, batch=20, model=MODEL, dsa_strategy=STRATEGY)[0]
            for x, y in clients
        ]
        targets[seed], present[seed] = aggregate_client_means(
            per_client, [class_counts(y, 3) for _, y in clients]
        )
        present[seed][2] = False  # pretend nobody has class 2
    syn_x = torch.randn(6, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    syn_y = torch.arange(3).repeat_interleave(2)
    kwargs = {"num_classes": 3, "present": present, "model": MODEL, "dsa_strategy": STRATEGY}
    before = collab_objective(syn_x, syn_y, targets, **kwargs)
    losses = []
    refined = syn_x
    for _ in range(4):  # several passes over the seeds
        refined = server_refine(
            refined, syn_y, targets, lr=1.0, progress=lambda i, v: losses.append(v), **kwargs
        )
    after = collab_objective(refined, syn_y, targets, **kwargs)
    assert len(losses) == 4 * len(seeds)
    assert after < 0.3 * before
    assert torch.equal(refined[4:], syn_x[4:])
