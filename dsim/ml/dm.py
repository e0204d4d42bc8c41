"""Distribution matching (DM, Zhao & Bilen 2023) and the CollabDM client/server pieces.

Seeds. Everything random is derived from integers, never from the global RNG:
- DM iteration `it` of `distill_dm(seed=s)` embeds with the network built from
  `derive_seed(s, it)`; real batches come from a generator seeded with `derive_seed(s, -1)`.
- Under a network seed `t` (a DM iteration or a CollabDM seed alpha_t), class `y` is augmented with
  the siamese DSA seed `derive_seed(t, y)`: real and synthetic images of a class see the same op and
  parameters, and a CollabDM server reproduces exactly the augmentation its clients used.

Batching. The loss is sum_y ||mean embed(DSA(real_y)) - mean embed(DSA(syn_y))||^2. All classes'
real batches are concatenated and embedded in one no-grad pass, all synthetic images in one pass
with grad, and per-class means are segment sums: no per-class forward calls. Each pass runs in
class-agnostic chunks of `chunk` images (default: device.default_chunk, 16 on a CPU, 1024 on a
GPU). With instance norm (the default) or no norm each image is embedded independently, so this
equals the per-class formulation; with batchnorm the batch statistics would mix classes and chunks.

Devices. Everything runs on the device of the real images (`server_refine`: of the synthetic ones);
networks are built on the CPU from their seed and moved (same network everywhere), labels are read
on the host once per call, and the chosen real images of an iteration reach the device as one
index copy. Nothing reads a device value back inside the loops unless a progress callback asks.

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
from dsim.ml import StepFn
from dsim.ml.device import CPU_CHUNK, DeviceLike, default_chunk, to_device
from dsim.ml.dsa import DEFAULT_STRATEGY, augment, derive_seed
from dsim.ml.models import ConvNet, ModelSpec, build_model, embedding_dim
from dsim.ml.pae import expand_images, pack

Targets = Mapping[int, torch.Tensor] | Sequence[tuple[int, torch.Tensor]]
"""CollabDM targets in step order: seed alpha_t -> aggregated mean embeddings [classes, emb_dim]."""

ProgressFn = Callable[[int, float], None]
"""Called after every step with (steps done, loss of that step)."""

LossFn = Callable[..., torch.Tensor]

_SAMPLING_STREAM = -1  # derive_seed(seed, -1) seeds the real-batch sampler
CHUNK = CPU_CHUNK
"""Images per forward call on a CPU (device.CPU_CHUNK); `chunk=None` picks device.default_chunk."""


# ---------------------------------------------------------------- data helpers


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Images per class as an int64 tensor [num_classes] (what a client reports beside its means)."""
    return torch.bincount(labels.long(), minlength=num_classes)[:num_classes]


def class_index(labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """Sorted class -> positions of that class in `labels` (on labels' device; the loops below
    pass CPU labels: building the index reads values, a sync per class on a GPU)."""
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
    than needed reuses them (cycling a random permutation); absent classes get no images. Images and
    labels are on real_x's device (the choice is made on the CPU, so it is the same everywhere).
    """
    if ipc < 1:
        raise DsimError(f"images per class must be >= 1, got {ipc}")
    factor = pae_factor or 1
    need = ipc * factor * factor
    gen = torch.Generator().manual_seed(seed)
    orders, classes = [], []
    for cls, idx in class_index(real_y.cpu()).items():
        order = idx[torch.randperm(len(idx), generator=gen)]
        if len(order) < need:
            order = order.repeat(-(-need // len(order)))
        orders.append(order[:need])
        classes.append(cls)
    if not orders:
        raise DsimError("cannot initialise a synthetic set from an empty real set")
    picked = real_x[to_device(torch.cat(orders), real_x.device)]
    images = torch.cat([pack(part, factor) for part in picked.split(need)])
    labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(ipc)
    return images.detach().clone(), to_device(labels, real_x.device)


def sample_class_batches(
    real_x: torch.Tensor,
    index: Mapping[int, torch.Tensor],
    classes: Sequence[int],
    batch: int,
    gen: torch.Generator,
) -> list[torch.Tensor]:
    """Up to `batch` random real images (without replacement) of each class, in `classes` order.

    The permutations come from `gen` (a CPU generator) and index `index` (best kept on the CPU);
    the chosen positions reach real_x's device in one copy and are gathered in one call.
    """
    picks = []
    for cls in classes:
        idx = index[cls]
        perm = torch.randperm(len(idx), generator=gen)[:batch]
        picks.append(idx[to_device(perm, idx.device)])
    if not picks:
        return []
    positions = to_device(torch.cat(picks), real_x.device)
    return list(real_x[positions].split([len(p) for p in picks]))


def _syn_parts(
    syn: torch.Tensor,
    index: Mapping[int, torch.Tensor],
    classes: Sequence[int],
    pae_factor: int | None,
) -> list[torch.Tensor]:
    """Each class's synthetic images, pae-expanded (differentiable in `syn`; `index` on syn's device)."""
    parts = []
    for cls in classes:
        images = syn[index[cls]]
        if pae_factor and pae_factor > 1:
            images = expand_images(images, pae_factor)
        parts.append(images)
    return parts


def _on_device(index: Mapping[int, torch.Tensor], device: torch.device) -> dict[int, torch.Tensor]:
    """A class index moved to `device` once per call (one small copy per class)."""
    return {c: to_device(i, device) for c, i in index.items()}


# ---------------------------------------------------------------- embedding statistics


def frozen_net(
    spec: ModelSpec,
    channels: int,
    num_classes: int,
    image_size: int,
    seed: int,
    *,
    device: DeviceLike | None = None,
) -> ConvNet:
    """The random embedding network of one DM step / CollabDM seed: built from `seed`, no grads,
    on `device` (the same weights on every device)."""
    net = build_model(spec, channels, num_classes, image_size, seed, device=device)
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
    """Per-segment mean (and unbiased std) of consecutive row blocks of `emb`.

    On a CPU one index_add over all rows (as always: CPU results stay bit-identical). Elsewhere a
    sum per segment: index_add accumulates with atomics on CUDA (not reproducible), and the
    segment sizes stay Python ints, so nothing is copied to the device.
    """
    if emb.device.type != "cpu":
        segments = emb.split(list(sizes))
        mean = torch.stack([s.sum(0) / len(s) for s in segments])
        if not with_std:
            return mean, None
        std = [
            ((s - m) ** 2).sum(0).div(max(len(s) - 1, 1)).sqrt()
            for s, m in zip(segments, mean, strict=True)
        ]
        return mean, torch.stack(std)
    counts = torch.tensor(sizes, dtype=emb.dtype, device=emb.device)
    ids = torch.repeat_interleave(torch.arange(len(sizes), device=emb.device), torch.tensor(sizes))
    zeros = emb.new_zeros(len(sizes), emb.shape[1])
    mean = zeros.index_add(0, ids, emb) / counts[:, None]
    if not with_std:
        return mean, None
    centred = emb - mean[ids]
    var = zeros.index_add(0, ids, centred * centred) / (counts[:, None] - 1).clamp(min=1)
    return mean, var.sqrt()


def _embed(net: ConvNet, x: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """net.embed(x) computed `chunk` images at a time (same result; None: default_chunk(x.device))."""
    if chunk is None:
        chunk = default_chunk(x.device)
    if chunk < 1:
        raise DsimError(f"chunk must be >= 1, got {chunk}")
    if len(x) <= chunk:
        return net.embed(x)
    return torch.cat([net.embed(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def real_class_stats(
    net: ConvNet,
    parts: Sequence[torch.Tensor],
    aug_seeds: Sequence[int],
    strategy: str | None,
    *,
    with_std: bool = False,
    chunk: int | None = None,
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
    chunk: int | None = None,
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
    chunk: int | None = None,
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
    loss = None
    for real, syn, seed in zip(real_parts, syn_parts, aug_seeds, strict=True):
        with torch.no_grad():
            real_emb = net.embed(augment(real, strategy, seed))
        syn_emb = net.embed(augment(syn, strategy, seed))
        term = ((real_emb.mean(0) - syn_emb.mean(0)) ** 2).sum()
        if match_std:
            term = term + ((real_emb.std(0) - syn_emb.std(0)) ** 2).sum()
        loss = term if loss is None else loss + term
    if loss is None:
        return torch.zeros((), device=syn_parts[0].device if syn_parts else None)
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
    chunk: int | None = None,
    per_class_loop: bool = False,
    on_step: StepFn | None = None,
) -> torch.Tensor:
    """Distill (real_x, real_y) into the synthetic images `init_x` (labels `init_y`) by DM.

    Per iteration: a fresh frozen random network, up to `batch_real` real images per class, siamese
    DSA per class, loss summed over classes, ONE SGD step on the pixels. pae_factor: stored images
    are expanded before embedding; CollabDM-pae clients also set match_std=True (REFERENCE §3).
    Returns the distilled images (same shape as init_x) on real_x's device (init_x is moved there);
    bit-identical for the same inputs, seed and device. chunk: images per forward call (None:
    default_chunk of the device). progress forces one device sync per step (it reads the loss);
    on_step (iterations done, iterations) costs none.
    per_class_loop: the reference code's one forward per class instead of one batched pass (the
    benchmark baseline); same sampling, networks and steps, so the same images up to float rounding.
    """
    loss_fn, loss_kwargs = (dm_loss_per_class, {}) if per_class_loop else (dm_loss, {"chunk": chunk})
    return _distill(
        loss_fn, init_x, init_y, real_x, real_y, iterations=iterations, lr=lr, momentum=momentum,
        batch_real=batch_real, model=model, num_classes=num_classes, dsa_strategy=dsa_strategy,
        seed=seed, pae_factor=pae_factor, match_std=match_std, progress=progress,
        loss_kwargs=loss_kwargs, on_step=on_step,
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
    on_step: StepFn | None,
) -> torch.Tensor:
    channels, size = _image_shape(real_x, "real images")
    if init_x.shape[1:] != real_x.shape[1:] or len(init_x) != len(init_y):
        raise DsimError(
            f"synthetic set {tuple(init_x.shape)} / {len(init_y)} labels does not fit real images {tuple(real_x.shape)}"
        )
    if iterations < 0 or batch_real < 1:
        raise DsimError(f"need iterations >= 0 and batch_real >= 1, got {iterations}, {batch_real}")
    device = real_x.device
    real_y, init_y = real_y.cpu(), init_y.cpu()  # labels are read on the host, once
    if num_classes is None:
        num_classes = max(int(real_y.max()), int(init_y.max())) + 1
    real_index = class_index(real_y)
    syn_index = class_index(init_y)
    classes = [c for c in syn_index if c in real_index]
    syn_rows = _on_device(syn_index, device)
    sampler = torch.Generator().manual_seed(derive_seed(seed, _SAMPLING_STREAM))

    def loss_at(it: int, syn: torch.Tensor) -> torch.Tensor:
        net_seed = derive_seed(seed, it)
        net = frozen_net(model, channels, num_classes, size, net_seed, device=device)
        real_parts = sample_class_batches(real_x, real_index, classes, batch_real, sampler)
        syn_parts = _syn_parts(syn, syn_rows, classes, pae_factor)
        aug_seeds = [derive_seed(net_seed, c) for c in classes]
        return loss_fn(
            net, real_parts, syn_parts, aug_seeds, dsa_strategy, match_std=match_std, **loss_kwargs
        )

    return _descend(to_device(init_x, device), lr, momentum, iterations, loss_at, progress, on_step)


def _descend(
    init: torch.Tensor,
    lr: float,
    momentum: float,
    steps: int,
    loss_at: Callable[[int, torch.Tensor], torch.Tensor],
    progress: ProgressFn | None,
    on_step: StepFn | None = None,
) -> torch.Tensor:
    """SGD on the pixels of a copy of `init`, one step per loss_at(step, pixels): DM and the CollabDM server.

    The loss is read back (a device sync) only for a progress callback."""
    syn = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=lr, momentum=momentum)
    if on_step is not None:
        on_step(0, steps)
    for step in range(steps):
        loss = loss_at(step, syn)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, steps)
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
    chunk: int | None = None,
    on_step: StepFn | None = None,
) -> torch.Tensor:
    """Client side of CollabDM: Tensor[len(seeds), num_classes, emb_dim] of mean real embeddings.

    Row (t, y) is the mean embedding of up to `batch` random real images of class y, augmented
    with DSA seed derive_seed(seeds[t], y), under the network built from seeds[t]. Classes the
    client lacks are zero rows (send `class_counts` beside them). Real images are never
    pae-expanded. Batch sampling is seeded by (sample_seed, seeds[t]). On real_x's device and dtype.
    on_step: (seeds done, seeds).
    """
    channels, size = _image_shape(real_x, "real images")
    device = real_x.device
    index = {c: i for c, i in class_index(real_y.cpu()).items() if c < num_classes}
    classes = list(index)
    out = torch.zeros(
        len(seeds), num_classes, embedding_dim(model, size), device=device, dtype=real_x.dtype
    )
    if not classes:
        return out
    rows = to_device(torch.tensor(classes, dtype=torch.long), device)
    if on_step is not None:
        on_step(0, len(seeds))
    for t, net_seed in enumerate(seeds):
        net = frozen_net(model, channels, num_classes, size, net_seed, device=device)
        sampler = torch.Generator().manual_seed(derive_seed(sample_seed, net_seed))
        parts = sample_class_batches(real_x, index, classes, batch, sampler)
        means, _ = real_class_stats(
            net, parts, [derive_seed(net_seed, c) for c in classes], dsa_strategy, chunk=chunk
        )
        out[t, rows] = means
        if on_step is not None:
            on_step(t + 1, len(seeds))
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
    device = means[0].device  # the result lives with the first client's means
    stacked = torch.stack([to_device(m, device) for m in means])  # [K, C, D]
    has = torch.stack([to_device(c, device) > 0 for c in counts]).to(stacked.dtype)  # [K, C]
    total = has.sum(0)
    target = (stacked * has[:, :, None]).sum(0) / total.clamp(min=1)[:, None]
    return target, total > 0


def _target_items(targets: Targets) -> list[tuple[int, torch.Tensor]]:
    return list(targets.items()) if isinstance(targets, Mapping) else list(targets)


class _CollabSteps:
    """The per-seed pieces of the CollabDM server loss, prepared once per call on syn's device:
    targets copied over, each step's classes (those with a target) and their rows as an index."""

    def __init__(
        self,
        syn_x: torch.Tensor,
        syn_y: torch.Tensor,
        targets: Targets,
        present: Mapping[int, torch.Tensor] | None,
    ) -> None:
        device = syn_x.device
        syn_index = class_index(syn_y.cpu())
        self.syn_rows = _on_device(syn_index, device)
        self.steps: list[tuple[int, torch.Tensor, list[int], torch.Tensor | None]] = []
        row_cache: dict[tuple[int, ...], torch.Tensor] = {}
        for net_seed, target in _target_items(targets):
            mask = present[net_seed].tolist() if present is not None else None
            classes = [c for c in syn_index if c < len(target) and (mask is None or mask[c])]
            key = tuple(classes)
            if classes and key not in row_cache:
                row_cache[key] = to_device(torch.tensor(classes, dtype=torch.long), device)
            self.steps.append((net_seed, to_device(target, device), classes, row_cache.get(key)))


def _collab_loss(
    net: ConvNet,
    syn: torch.Tensor,
    syn_rows: Mapping[int, torch.Tensor],
    target: torch.Tensor,
    classes: Sequence[int],
    rows: torch.Tensor | None,
    net_seed: int,
    dsa_strategy: str | None,
    pae_factor: int | None,
    chunk: int | None,
) -> torch.Tensor:
    """sum_y ||target[y] - mean embed(DSA_{seed,y}(expand(syn^y)))||^2 over `classes` (their rows)."""
    if not classes or rows is None:
        return syn.sum() * 0.0
    parts = _syn_parts(syn, syn_rows, classes, pae_factor)
    means, _ = syn_class_stats(
        net, parts, [derive_seed(net_seed, c) for c in classes], dsa_strategy, chunk=chunk
    )
    return ((target[rows].to(means.dtype) - means) ** 2).sum()


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
    chunk: int | None = None,
    on_step: StepFn | None = None,
) -> torch.Tensor:
    """Server side of CollabDM: one SGD step on the synthetic pixels per seed, in `targets` order.

    targets: seed alpha_t -> aggregated client means [num_classes, emb_dim] (a mapping or a list of
    (seed, target) pairs); present (optional):
    seed -> bool [num_classes], classes without a target are left out of that step's loss. The
    network and the per-class DSA are rebuilt from each seed exactly as the clients did; the
    whole synthetic set of each class is used (no std term, as in the reference server). Runs on
    syn_x's device; targets and masks may live anywhere (they are copied over once, up front).
    on_step: (seeds done, seeds).
    """
    channels, size = _image_shape(syn_x, "synthetic images")
    prepared = _CollabSteps(syn_x, syn_y, targets, present)

    def loss_at(step: int, syn: torch.Tensor) -> torch.Tensor:
        net_seed, target, classes, rows = prepared.steps[step]
        net = frozen_net(model, channels, num_classes, size, net_seed, device=syn.device)
        return _collab_loss(
            net, syn, prepared.syn_rows, target, classes, rows, net_seed, dsa_strategy,
            pae_factor, chunk,
        )  # fmt: skip

    return _descend(syn_x, lr, momentum, len(prepared.steps), loss_at, progress, on_step)


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
    """Sum over seeds of the CollabDM loss of a fixed synthetic set (for logging and tests); one
    device sync at the end, not one per seed."""
    channels, size = _image_shape(syn_x, "synthetic images")
    prepared = _CollabSteps(syn_x, syn_y, targets, present)
    losses = []
    with torch.no_grad():
        for net_seed, target, classes, rows in prepared.steps:
            net = frozen_net(model, channels, num_classes, size, net_seed, device=syn_x.device)
            losses.append(
                _collab_loss(
                    net, syn_x, prepared.syn_rows, target, classes, rows, net_seed, dsa_strategy,
                    pae_factor, None,
                )
            )  # fmt: skip
    return sum(torch.stack(losses).tolist()) if losses else 0.0


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
