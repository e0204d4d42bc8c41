"""Distribution matching (DM, Zhao & Bilen 2023) and the CollabDM client/server pieces.

Seeds. Everything random is derived from integers, never from the global RNG:
- DM iteration `it` of `distill_dm(seed=s)` embeds with the network built from
  `derive_seed(s, it)`; real batches come from a generator seeded with `derive_seed(s, -1)`.
- Under a network seed `t` (a DM iteration or a CollabDM seed alpha_t), class `y` is augmented with
  the siamese DSA seed `derive_seed(t, y)`: real and synthetic images of a class see the same op and
  parameters, and a CollabDM server reproduces exactly the augmentation its clients used.

Batching. The loss is sum_y ||mean embed(DSA(real_y)) - mean embed(DSA(syn_y))||^2. All classes'
real batches are concatenated and embedded in one no-grad pass, all synthetic images in one pass
with grad, and per-class means are segment sums (index_add): no per-class forward calls. Each pass
runs in class-agnostic chunks of `chunk` images (see CHUNK). With instance norm (the default) or
no norm each image is embedded independently, so this equals the per-class formulation; with
batchnorm the batch statistics would mix classes and chunks.

Missing classes. A class absent from a client's real data is skipped: `distill_dm` does not touch
synthetic images of classes without real data, `init_from_real` creates none for it, and
`client_mean_embeddings` returns zeros for it; `class_counts` tells the server which rows are real
and `aggregate_client_means` averages each class over the clients that have it (unweighted, as in
the reference), marking classes no participating client has so `server_refine` skips them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from dsim.errors import DsimError
from dsim.ml.dsa import DEFAULT_STRATEGY, augment, derive_seed
from dsim.ml.models import ConvNet, ModelSpec, build_model, embedding_dim
from dsim.ml.pae import expand, pack

Targets = Mapping[int, torch.Tensor] | Sequence[tuple[int, torch.Tensor]]
"""CollabDM targets in step order: seed alpha_t -> aggregated mean embeddings [classes, emb_dim]."""

ProgressFn = Callable[[int, float], None]
"""Called after every step with (steps done, loss of that step)."""

LossFn = Callable[..., torch.Tensor]

_SAMPLING_STREAM = -1  # derive_seed(seed, -1) seeds the real-batch sampler
CHUNK = 16
"""Images per forward call. Class-agnostic chunks of ~16 28x28 images keep ConvNet-3 activations
near cache; on this 2-core CPU they gave ~1.5x the images/s of 128- to 2,560-image calls."""


# ---------------------------------------------------------------- data helpers


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Images per class as an int64 tensor [num_classes] (what a client reports beside its means)."""
    return torch.bincount(labels.long(), minlength=num_classes)[:num_classes]


def class_index(labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """Sorted class -> positions of that class in `labels`."""
    labels = labels.long()
    return {int(c): torch.nonzero(labels == c).flatten() for c in torch.unique(labels).tolist()}


def _image_shape(x: torch.Tensor, what: str) -> tuple[int, int]:
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise DsimError(f"{what} must be square images [N, C, S, S], got shape {tuple(x.shape)}")
    return x.shape[1], x.shape[-1]


def init_from_real(
    real_x: torch.Tensor,
    real_y: torch.Tensor,
    ipc: int,
    seed: int,
    *,
    pae_factor: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic set of `ipc` random real images per class present (sorted by class).

    With pae factor l each stored image packs l*l random real images. A class with fewer real images
    than needed reuses them (cycling a random permutation); absent classes get no images.
    """
    if ipc < 1:
        raise DsimError(f"images per class must be >= 1, got {ipc}")
    factor = pae_factor or 1
    need = ipc * factor * factor
    gen = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for cls, idx in class_index(real_y).items():
        order = idx[torch.randperm(len(idx), generator=gen)]
        if len(order) < need:
            order = order.repeat(-(-need // len(order)))
        images.append(pack(real_x[order[:need]], factor))
        labels.append(torch.full((ipc,), cls, dtype=torch.long))
    if not images:
        raise DsimError("cannot initialise a synthetic set from an empty real set")
    return torch.cat(images).detach().clone(), torch.cat(labels)


def sample_class_batches(
    real_x: torch.Tensor,
    index: Mapping[int, torch.Tensor],
    classes: Sequence[int],
    batch: int,
    gen: torch.Generator,
) -> list[torch.Tensor]:
    """Up to `batch` random real images (without replacement) of each class, in `classes` order."""
    parts = []
    for cls in classes:
        idx = index[cls]
        parts.append(real_x[idx[torch.randperm(len(idx), generator=gen)[:batch]]])
    return parts


def _syn_parts(
    syn: torch.Tensor,
    index: Mapping[int, torch.Tensor],
    classes: Sequence[int],
    pae_factor: int | None,
) -> list[torch.Tensor]:
    """Each class's synthetic images, pae-expanded (differentiable in `syn`)."""
    parts = []
    for cls in classes:
        images = syn[index[cls]]
        if pae_factor and pae_factor > 1:
            images, _ = expand(images, torch.zeros(len(images), dtype=torch.long), pae_factor)
        parts.append(images)
    return parts


# ---------------------------------------------------------------- embedding statistics


def frozen_net(
    spec: ModelSpec, channels: int, num_classes: int, image_size: int, seed: int
) -> ConvNet:
    """The random embedding network of one DM step / CollabDM seed: built from `seed`, no grads."""
    net = build_model(spec, channels, num_classes, image_size, seed)
    net.requires_grad_(False)
    net.train()  # as the reference: matters only for batchnorm
    return net


def _augment_parts(
    parts: Sequence[torch.Tensor], strategy: str | None, seeds: Sequence[int]
) -> torch.Tensor:
    return torch.cat([augment(p, strategy, s) for p, s in zip(parts, seeds, strict=True)])


def _segment_stats(
    emb: torch.Tensor, sizes: Sequence[int], with_std: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-segment mean (and unbiased std) of consecutive row blocks of `emb`."""
    counts = torch.tensor(sizes, dtype=emb.dtype, device=emb.device)
    ids = torch.repeat_interleave(torch.arange(len(sizes), device=emb.device), torch.tensor(sizes))
    zeros = emb.new_zeros(len(sizes), emb.shape[1])
    mean = zeros.index_add(0, ids, emb) / counts[:, None]
    if not with_std:
        return mean, None
    centred = emb - mean[ids]
    var = zeros.index_add(0, ids, centred * centred) / (counts[:, None] - 1).clamp(min=1)
    return mean, var.sqrt()


def _embed(net: ConvNet, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """net.embed(x) computed `chunk` images at a time (same result, cache-friendly)."""
    if chunk < 1:
        raise DsimError(f"chunk must be >= 1, got {chunk}")
    return torch.cat([net.embed(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def real_class_stats(
    net: ConvNet,
    parts: Sequence[torch.Tensor],
    aug_seeds: Sequence[int],
    strategy: str | None,
    *,
    with_std: bool = False,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean (and std) embedding of each part under siamese DSA; no autograd at all."""
    with torch.no_grad():
        emb = _embed(net, _augment_parts(parts, strategy, aug_seeds), chunk)
        return _segment_stats(emb, [len(p) for p in parts], with_std)


def syn_class_stats(
    net: ConvNet,
    parts: Sequence[torch.Tensor],
    aug_seeds: Sequence[int],
    strategy: str | None,
    *,
    with_std: bool = False,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean (and std) embedding of each synthetic part, one pass in chunks, differentiable."""
    emb = _embed(net, _augment_parts(parts, strategy, aug_seeds), chunk)
    return _segment_stats(emb, [len(p) for p in parts], with_std)


def dm_loss(
    net: ConvNet,
    real_parts: Sequence[torch.Tensor],
    syn_parts: Sequence[torch.Tensor],
    aug_seeds: Sequence[int],
    strategy: str | None,
    *,
    match_std: bool = False,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """DM loss of one network, batched over classes (part k of real/syn/seeds = one class)."""
    real_mean, real_std = real_class_stats(
        net, real_parts, aug_seeds, strategy, with_std=match_std, chunk=chunk
    )
    syn_mean, syn_std = syn_class_stats(
        net, syn_parts, aug_seeds, strategy, with_std=match_std, chunk=chunk
    )
    loss = ((real_mean - syn_mean) ** 2).sum()
    if match_std:
        loss = loss + ((real_std - syn_std) ** 2).sum()
    return loss


def dm_loss_per_class(
    net: ConvNet,
    real_parts: Sequence[torch.Tensor],
    syn_parts: Sequence[torch.Tensor],
    aug_seeds: Sequence[int],
    strategy: str | None,
    *,
    match_std: bool = False,
) -> torch.Tensor:
    """The reference formulation: two forward passes per class. Baseline for tests/benchmarks."""
    loss = torch.zeros(())
    for real, syn, seed in zip(real_parts, syn_parts, aug_seeds, strict=True):
        with torch.no_grad():
            real_emb = net.embed(augment(real, strategy, seed))
        syn_emb = net.embed(augment(syn, strategy, seed))
        loss = loss + ((real_emb.mean(0) - syn_emb.mean(0)) ** 2).sum()
        if match_std:
            loss = loss + ((real_emb.std(0) - syn_emb.std(0)) ** 2).sum()
    return loss


# ---------------------------------------------------------------- DM / LocalDM


def distill_dm(
    init_x: torch.Tensor,
    init_y: torch.Tensor,
    real_x: torch.Tensor,
    real_y: torch.Tensor,
    *,
    iterations: int,
    lr: float = 1.0,
    momentum: float = 0.5,
    batch_real: int = 256,
    model: ModelSpec = "convnet",
    num_classes: int | None = None,
    dsa_strategy: str | None = DEFAULT_STRATEGY,
    seed: int = 0,
    pae_factor: int | None = None,
    match_std: bool = False,
    progress: ProgressFn | None = None,
    chunk: int = CHUNK,
    per_class_loop: bool = False,
) -> torch.Tensor:
    """Distill (real_x, real_y) into the synthetic images `init_x` (labels `init_y`) by DM.

    Per iteration: a fresh frozen random network, up to `batch_real` real images per class, siamese
    DSA per class, loss summed over classes, ONE SGD step on the pixels. pae_factor: stored images
    are expanded before embedding; CollabDM-pae clients also set match_std=True (REFERENCE §3).
    Returns the distilled images (same shape as init_x); bit-identical for the same inputs and seed.
    per_class_loop: the reference code's one forward per class instead of one batched pass (the
    benchmark baseline); same sampling, networks and steps, so the same images up to float rounding.
    """
    loss_fn, loss_kwargs = (dm_loss_per_class, {}) if per_class_loop else (dm_loss, {"chunk": chunk})
    return _distill(
        loss_fn, init_x, init_y, real_x, real_y, iterations=iterations, lr=lr, momentum=momentum,
        batch_real=batch_real, model=model, num_classes=num_classes, dsa_strategy=dsa_strategy,
        seed=seed, pae_factor=pae_factor, match_std=match_std, progress=progress,
        loss_kwargs=loss_kwargs,
    )  # fmt: skip


def _distill(
    loss_fn: LossFn,
    init_x: torch.Tensor,
    init_y: torch.Tensor,
    real_x: torch.Tensor,
    real_y: torch.Tensor,
    *,
    iterations: int,
    lr: float,
    momentum: float,
    batch_real: int,
    model: ModelSpec,
    num_classes: int | None,
    dsa_strategy: str | None,
    seed: int,
    pae_factor: int | None,
    match_std: bool,
    progress: ProgressFn | None,
    loss_kwargs: dict,
) -> torch.Tensor:
    channels, size = _image_shape(real_x, "real images")
    if init_x.shape[1:] != real_x.shape[1:] or len(init_x) != len(init_y):
        raise DsimError(
            f"synthetic set {tuple(init_x.shape)} / {len(init_y)} labels does not fit real images {tuple(real_x.shape)}"
        )
    if iterations < 0 or batch_real < 1:
        raise DsimError(f"need iterations >= 0 and batch_real >= 1, got {iterations}, {batch_real}")
    if num_classes is None:
        num_classes = int(max(real_y.max(), init_y.max())) + 1
    real_index = class_index(real_y)
    syn_index = class_index(init_y)
    classes = [c for c in syn_index if c in real_index]
    sampler = torch.Generator().manual_seed(derive_seed(seed, _SAMPLING_STREAM))

    def loss_at(it: int, syn: torch.Tensor) -> torch.Tensor:
        net_seed = derive_seed(seed, it)
        net = frozen_net(model, channels, num_classes, size, net_seed)
        real_parts = sample_class_batches(real_x, real_index, classes, batch_real, sampler)
        syn_parts = _syn_parts(syn, syn_index, classes, pae_factor)
        aug_seeds = [derive_seed(net_seed, c) for c in classes]
        return loss_fn(
            net, real_parts, syn_parts, aug_seeds, dsa_strategy, match_std=match_std, **loss_kwargs
        )

    return _descend(init_x, lr, momentum, iterations, loss_at, progress)


def _descend(
    init: torch.Tensor,
    lr: float,
    momentum: float,
    steps: int,
    loss_at: Callable[[int, torch.Tensor], torch.Tensor],
    progress: ProgressFn | None,
) -> torch.Tensor:
    """SGD on the pixels of a copy of `init`, one step per loss_at(step, pixels): DM and the CollabDM server."""
    syn = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=lr, momentum=momentum)
    for step in range(steps):
        loss = loss_at(step, syn)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, float(loss.detach()))
    return syn.detach()


# ---------------------------------------------------------------- CollabDM


def client_mean_embeddings(
    real_x: torch.Tensor,
    real_y: torch.Tensor,
    seeds: Sequence[int],
    num_classes: int,
    *,
    batch: int = 512,
    model: ModelSpec = "convnet",
    dsa_strategy: str | None = DEFAULT_STRATEGY,
    sample_seed: int = 0,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """Client side of CollabDM: Tensor[len(seeds), num_classes, emb_dim] of mean real embeddings.

    Row (t, y) is the mean embedding of up to `batch` random real images of class y, augmented
    with DSA seed derive_seed(seeds[t], y), under the network built from seeds[t]. Classes the
    client lacks are zero rows (send `class_counts` beside them). Real images are never
    pae-expanded. Batch sampling is seeded by (sample_seed, seeds[t]).
    """
    channels, size = _image_shape(real_x, "real images")
    index = {c: i for c, i in class_index(real_y).items() if c < num_classes}
    classes = list(index)
    out = torch.zeros(len(seeds), num_classes, embedding_dim(model, size))
    for t, net_seed in enumerate(seeds):
        if not classes:
            break
        net = frozen_net(model, channels, num_classes, size, net_seed)
        sampler = torch.Generator().manual_seed(derive_seed(sample_seed, net_seed))
        parts = sample_class_batches(real_x, index, classes, batch, sampler)
        means, _ = real_class_stats(
            net, parts, [derive_seed(net_seed, c) for c in classes], dsa_strategy, chunk=chunk
        )
        out[t, classes] = means
    return out


def aggregate_client_means(
    means: Sequence[torch.Tensor], counts: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Server side, one seed: unweighted mean over the clients that have each class.

    means[k]: Tensor[num_classes, emb_dim] of participating client k; counts[k]: its class_counts.
    Returns (target [num_classes, emb_dim], present [num_classes] bool); absent rows are zero.
    """
    if not means or len(means) != len(counts):
        raise DsimError("aggregate_client_means needs one counts tensor per client means tensor")
    stacked = torch.stack(list(means))  # [K, C, D]
    has = torch.stack([c > 0 for c in counts]).to(stacked.dtype)  # [K, C]
    total = has.sum(0)
    target = (stacked * has[:, :, None]).sum(0) / total.clamp(min=1)[:, None]
    return target, total > 0


def _target_items(targets: Targets) -> list[tuple[int, torch.Tensor]]:
    return list(targets.items()) if isinstance(targets, Mapping) else list(targets)


def _collab_loss(
    net: ConvNet,
    syn: torch.Tensor,
    syn_index: Mapping[int, torch.Tensor],
    target: torch.Tensor,
    present: torch.Tensor | None,
    net_seed: int,
    dsa_strategy: str | None,
    pae_factor: int | None,
) -> torch.Tensor:
    """sum_y ||target[y] - mean embed(DSA_{seed,y}(expand(syn^y)))||^2 over classes with a target."""
    classes = [c for c in syn_index if c < len(target) and (present is None or bool(present[c]))]
    if not classes:
        return syn.sum() * 0.0
    parts = _syn_parts(syn, syn_index, classes, pae_factor)
    means, _ = syn_class_stats(
        net, parts, [derive_seed(net_seed, c) for c in classes], dsa_strategy
    )
    return ((target[classes].to(means.dtype) - means) ** 2).sum()


def server_refine(
    syn_x: torch.Tensor,
    syn_y: torch.Tensor,
    targets: Targets,
    *,
    num_classes: int,
    present: Mapping[int, torch.Tensor] | None = None,
    lr: float = 10.0,
    momentum: float = 0.5,
    model: ModelSpec = "convnet",
    dsa_strategy: str | None = DEFAULT_STRATEGY,
    pae_factor: int | None = None,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Server side of CollabDM: one SGD step on the synthetic pixels per seed, in `targets` order.

    targets: seed alpha_t -> aggregated client means [num_classes, emb_dim] (a mapping or a list of
    (seed, target) pairs); present (optional):
    seed -> bool [num_classes], classes without a target are left out of that step's loss. The
    network and the per-class DSA are rebuilt from each seed exactly as the clients did; the
    whole synthetic set of each class is used (no std term, as in the reference server).
    """
    channels, size = _image_shape(syn_x, "synthetic images")
    syn_index = class_index(syn_y)
    items = _target_items(targets)

    def loss_at(step: int, syn: torch.Tensor) -> torch.Tensor:
        net_seed, target = items[step]
        net = frozen_net(model, channels, num_classes, size, net_seed)
        mask = present[net_seed] if present is not None else None
        return _collab_loss(net, syn, syn_index, target, mask, net_seed, dsa_strategy, pae_factor)

    return _descend(syn_x, lr, momentum, len(items), loss_at, progress)


def collab_objective(
    syn_x: torch.Tensor,
    syn_y: torch.Tensor,
    targets: Targets,
    *,
    num_classes: int,
    present: Mapping[int, torch.Tensor] | None = None,
    model: ModelSpec = "convnet",
    dsa_strategy: str | None = DEFAULT_STRATEGY,
    pae_factor: int | None = None,
) -> float:
    """Sum over seeds of the CollabDM loss of a fixed synthetic set (for logging and tests)."""
    channels, size = _image_shape(syn_x, "synthetic images")
    syn_index = class_index(syn_y)
    total = 0.0
    with torch.no_grad():
        for net_seed, target in _target_items(targets):
            net = frozen_net(model, channels, num_classes, size, net_seed)
            mask = present[net_seed] if present is not None else None
            total += float(
                _collab_loss(
                    net, syn_x, syn_index, target, mask, net_seed, dsa_strategy, pae_factor
                )
            )
    return total


# ---------------------------------------------------------------- server's global set


def keep_per_class(
    x: torch.Tensor, y: torch.Tensor, ipc: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `ipc` random images of each class of (x, y), sorted by class: what the reference
    CollabDM server keeps of the clients' union (main.py samples `ipc` per class at random).

    Classes with fewer images keep all of them (none is repeated); the order within a class is the
    union's, so a union that already has `ipc` per class comes back unchanged.
    """
    if ipc < 1:
        raise DsimError(f"images per class must be >= 1, got {ipc}")
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for _, idx in class_index(y.cpu()).items():
        chosen = idx if len(idx) <= ipc else idx[torch.randperm(len(idx), generator=gen)[:ipc].sort().values]
        keep.append(chosen)
    order = torch.cat(keep).to(x.device)
    return x[order], y[order]
