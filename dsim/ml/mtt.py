"""Matching Training Trajectories (MTT, Cazenavette et al. 2022), as plain library functions.

Two phases (REFERENCE §4):
- `train_experts`: train ConvNets on the real data (SGD lr 0.01, no momentum, no weight decay,
  no lr decay, DSA, as the reference buffer.py) and keep the parameters after every epoch as one
  float32 flat vector per epoch: a `Trajectory`. Kept in memory, or with `store_dir` as one .npy
  file per expert read back through a memory map, so a large buffer stays on disk.
- `distill_mtt`: per iteration, start a student at expert epoch t, take `syn_steps` SGD steps on
  the synthetic images with the trainable lr alpha while keeping the autograd graph, and move the
  pixels and alpha to bring the student close to the expert `expert_epochs` epochs later.

The student is a *flat parameter vector*: every unrolled step runs the network functionally
(torch.func.functional_call over views of the vector), so theta_{n+1} = theta_n - alpha * grad is
an ordinary differentiable expression of the pixels and of alpha. Only per-sample norms are
supported (instance norm, the default, layer/group norm or none); batchnorm's running statistics
are outside what a functional unroll models, so it is refused.

Seeds. All randomness is local: expert k is built from derive_seed(seed, k, 1) and trained with
derive_seed(seed, k, 2); distillation draws experts, start epochs, minibatches and the per-image
DSA from one generator seeded with derive_seed(seed, -1); the synthetic set starts from
init_from_real(..., seed=derive_seed(seed, -2)); every evaluation trains fresh models from the same
derive_seed(seed, -3), so successive evaluations differ only by the images and the lr.

Devices. Experts train, and distillation runs, on the device of the real images. Trajectories are
kept on the CPU (or on disk): a buffer of many experts outgrows a GPU, and each iteration copies
only its two snapshots over. Generators are CPU generators (the same draws on every device).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dsim.errors import DsimError
from dsim.ml import StepFn
from dsim.ml.device import DeviceLike, to_device
from dsim.ml.dm import init_from_real
from dsim.ml.dsa import augment, derive_seed
from dsim.ml.evaluate import evaluate_synthetic
from dsim.ml.models import ModelSpec, build_model, flat_params, model_config
from dsim.ml.train import train_model

ExpertProgressFn = Callable[[int, int], None]
"""train_experts progress: (expert epochs done, num_experts * epochs), after every expert epoch."""
DistillProgressFn = Callable[[dict], None]
"""distill_mtt progress: the history entry of each iteration (see MTTResult.history)."""

EXPERT_FILE = "expert_{:04d}.npy"
MIN_LR = 1e-8
"""Floor of the learned lr: the reference leaves alpha free, but alpha <= 0 would make the student
climb the loss and SGD refuses it at evaluation; the floor only matters in a diverging run."""


# ---------------------------------------------------------------- trajectories


@dataclass
class Trajectory:
    """One expert: flat parameter vectors after epoch 0 (the initialisation), 1, ..., E.

    `params` is [E + 1, P] float32: a tensor in memory, or a read-only np.memmap of `path`.
    """

    params: torch.Tensor | np.ndarray
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.params.ndim != 2 or self.params.shape[0] < 1:
            raise DsimError(
                f"a trajectory is [epochs + 1, params], got shape {tuple(self.params.shape)}"
            )

    def epoch(self, t: int, device: DeviceLike | None = None) -> torch.Tensor:
        """Parameters after epoch t as a fresh float32 vector (a copy: safe to modify), on
        `device` (default: where the trajectory is, the CPU for a memory map)."""
        if not 0 <= t < len(self):
            raise IndexError(f"epoch {t} outside trajectory of {len(self)} snapshots")
        row = self.params[t]
        if isinstance(row, torch.Tensor):
            vector = row.detach().to(torch.float32).clone()
        else:
            vector = torch.from_numpy(np.array(row, dtype=np.float32))
        return vector if device is None else to_device(vector, device)

    def __len__(self) -> int:
        return int(self.params.shape[0])

    @property
    def num_params(self) -> int:
        return int(self.params.shape[1])

    def save(self, path: Path) -> Trajectory:
        """Write the snapshots to `path` (.npy, no pickle) and return the on-disk trajectory."""
        array = (
            self.params.detach().cpu().numpy()
            if isinstance(self.params, torch.Tensor)
            else np.asarray(self.params)
        )
        _write_npy(Path(path), array.astype(np.float32, copy=False))
        return Trajectory.load(path)

    @classmethod
    def load(cls, path: Path) -> Trajectory:
        """Memory-map an expert file written by `save` / `train_experts` (never unpickles)."""
        path = Path(path)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DsimError(f"cannot read expert trajectory {path}: {exc}") from None
        if array.dtype != np.float32 or array.ndim != 2:
            raise DsimError(
                f"{path} is not an expert trajectory (float32 [epochs+1, params]), "
                f"got {array.dtype} {array.shape}"
            )
        return cls(array, path)


def load_experts(store_dir: Path) -> list[Trajectory]:
    """The trajectories `train_experts(store_dir=...)` wrote, in expert order (memory-mapped)."""
    paths = sorted(Path(store_dir).glob("expert_*.npy"))
    if not paths:
        raise DsimError(f"no expert trajectories (expert_*.npy) in {store_dir}")
    return [Trajectory.load(p) for p in paths]


def _write_npy(path: Path, array: np.ndarray) -> None:
    """np.save through a temporary name, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    os.replace(tmp, path)


def _refuse_batchnorm(model: ModelSpec) -> None:
    if model_config(model).norm == "batchnorm":
        raise DsimError(
            "MTT needs a per-sample norm (instancenorm, layernorm, groupnorm or none); "
            "batchnorm running statistics are not supported"
        )


def _check_images(x: torch.Tensor, y: torch.Tensor, num_classes: int, what: str) -> tuple[int, int]:
    """(channels, side) of a labelled image set, refusing shapes and labels the model cannot take."""
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise DsimError(f"{what} must be square images [N, C, S, S], got shape {tuple(x.shape)}")
    if len(x) != len(y) or len(x) == 0:
        raise DsimError(f"{what}: need as many labels as images (> 0), got {len(x)} and {len(y)}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        raise DsimError(f"{what}: labels must lie in [0, {num_classes}), got {low}..{high}")
    return x.shape[1], x.shape[-1]


def train_experts(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_experts: int,
    epochs: int,
    num_classes: int,
    model: ModelSpec = "convnet",
    lr: float = 0.01,
    batch: int = 256,
    dsa_strategy: str | None = None,
    seed: int = 0,
    store_dir: Path | None = None,
    progress: ExpertProgressFn | None = None,
) -> list[Trajectory]:
    """Train `num_experts` fresh models on (x, y) for `epochs` epochs, recording every epoch.

    As the reference buffer.py: SGD with momentum 0, weight decay 0 and a constant lr; DSA (one
    op per batch, per-image parameters) on every batch when a strategy is given. With `store_dir`
    expert k goes to store_dir/expert_{k:04d}.npy (overwriting) and comes back memory-mapped;
    give each buffer its own folder, as `load_experts` reads every expert_*.npy there. Training
    runs on x's device; the snapshots are copied to the CPU after every epoch.
    """
    channels, size = _check_images(x, y, num_classes, "expert training data")
    if num_experts < 1 or epochs < 1:
        raise DsimError(f"need num_experts >= 1 and epochs >= 1, got {num_experts}, {epochs}")
    if lr <= 0:
        raise DsimError(f"expert lr must be > 0, got {lr}")
    _refuse_batchnorm(model)
    y = y.long()
    experts: list[Trajectory] = []
    total = num_experts * epochs
    for k in range(num_experts):
        net = build_model(model, channels, num_classes, size, derive_seed(seed, k, 1))
        snapshots = torch.empty(epochs + 1, sum(p.numel() for p in net.parameters()))
        snapshots[0] = flat_params(net)  # built on the CPU, moved to x's device by train_model

        def snapshot(
            done: int, trained: nn.Module, k: int = k, rows: torch.Tensor = snapshots
        ) -> None:
            rows[done] = flat_params(trained).cpu()
            if progress is not None:
                progress(k * epochs + done, total)

        train_model(
            net, x, y, epochs=epochs, lr=lr, momentum=0.0, weight_decay=0.0, batch=batch,
            dsa_strategy=dsa_strategy, lr_decay_at_half=False, seed=derive_seed(seed, k, 2),
            on_epoch=snapshot,
        )  # fmt: skip
        trajectory = Trajectory(snapshots)
        if store_dir is not None:
            trajectory = trajectory.save(Path(store_dir) / EXPERT_FILE.format(k))
        experts.append(trajectory)
    return experts


# ---------------------------------------------------------------- the unrolled student


class FunctionalNet:
    """A network evaluated with its parameters given as one flat vector (differentiably).

    `net(flat, x)` splits `flat` into views shaped like the module's parameters (module order, the
    layout of models.flat_params) and runs the module functionally in train mode.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module.train()
        named = list(module.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.num_params = sum(self.sizes)

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        views = flat.split(self.sizes)
        params = {n: v.view(s) for n, v, s in zip(self.names, views, self.shapes, strict=True)}
        return functional_call(self.module, params, (x,))


def student_net(
    model: ModelSpec,
    channels: int,
    num_classes: int,
    image_size: int,
    *,
    device: DeviceLike | None = None,
) -> FunctionalNet:
    """The functional student of `distill_mtt` on `device` (its own weights are never used; its
    buffers, if any, must sit with the flat parameters)."""
    _refuse_batchnorm(model)
    return FunctionalNet(build_model(model, channels, num_classes, image_size, 0, device=device))


def matching_loss(
    net: FunctionalNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: torch.Tensor,
    start: torch.Tensor,
    target: torch.Tensor,
    *,
    syn_steps: int,
    batch_syn: int | None = None,
    dsa_strategy: str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """||theta_N - target||^2 / ||start - target||^2 after N unrolled student steps from `start`.

    Each step takes the next `batch_syn` images of a random permutation (a new permutation when
    one runs out, as the reference), augments them with per-image DSA drawn from `generator`, and
    sets theta <- theta - lr * grad CE(theta) with create_graph, so the result is differentiable
    in `images` and `lr`. Runs on the device of `images` (start, target, labels and lr are moved
    there if they are elsewhere); `generator` is a CPU generator, each permutation is copied once.
    """
    device = images.device
    batch = len(images) if batch_syn is None else batch_syn
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    start, target = to_device(start, device), to_device(target, device)
    labels, lr = to_device(labels, device), to_device(lr, device)
    theta = start.detach().requires_grad_(True)
    chunks: list[torch.Tensor] = []
    for _ in range(syn_steps):
        if not chunks:
            order = to_device(torch.randperm(len(images), generator=gen), device)
            chunks = list(order.split(batch))
        idx = chunks.pop()
        xb = images[idx]
        if dsa_strategy:
            xb = augment(xb, dsa_strategy, generator=gen)
        ce = F.cross_entropy(net(theta, xb), labels[idx])
        (grad,) = torch.autograd.grad(ce, theta, create_graph=True)
        theta = theta - lr * grad
    target = target.detach()
    travelled = ((start.detach() - target) ** 2).sum().clamp_min(1e-30)
    return ((theta - target) ** 2).sum() / travelled


# ---------------------------------------------------------------- distillation


@dataclass
class MTTResult:
    """The best synthetic set found (by validation accuracy) and its learned lr.

    history: one dict per iteration {iteration, loss, lr, expert, start_epoch} plus val_accuracy
    where that iteration was evaluated. best_iteration 0 means the initial (real) set scored best.
    best_accuracy is nan when nothing was evaluated (eval_every=0; the final set is returned).
    initial_accuracy: the score of the initial real images (the paper's "base" set), when evaluated.
    """

    images: torch.Tensor
    labels: torch.Tensor
    lr: float
    best_accuracy: float
    best_iteration: int
    history: list[dict] = field(default_factory=list)
    initial_accuracy: float | None = None


def _check_experts(experts: list[Trajectory], num_params: int, needed: int) -> None:
    if not experts:
        raise DsimError("MTT needs at least one expert trajectory")
    for k, expert in enumerate(experts):
        if expert.num_params != num_params:
            raise DsimError(
                f"expert {k} has {expert.num_params} parameters, the model has {num_params}: "
                "different model, image shape or class count"
            )
        if len(expert) < needed:
            raise DsimError(
                f"expert {k} has {len(expert) - 1} epochs; max_start_epoch + expert_epochs "
                f"needs {needed - 1}"
            )


def distill_mtt(
    real_x: torch.Tensor,
    real_y: torch.Tensor,
    experts: list[Trajectory],
    *,
    ipc: int,
    iterations: int,
    num_classes: int,
    syn_steps: int = 20,
    expert_epochs: int = 2,
    max_start_epoch: int = 2,
    lr_img: float = 100.0,
    lr_lr: float = 1e-5,
    lr_teacher: float = 0.01,
    batch_syn: int | None = None,
    model: ModelSpec = "convnet",
    dsa_strategy: str | None = None,
    seed: int = 0,
    eval_every: int = 0,
    val_x: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    eval_epochs: int = 50,
    eval_models: int = 1,
    progress: DistillProgressFn | None = None,
    on_step: StepFn | None = None,
) -> MTTResult:
    """Distill (real_x, real_y) into `ipc` images per class by trajectory matching.

    Start epochs are drawn from [0, max_start_epoch) and matched against expert_epochs later, so
    every expert needs max_start_epoch - 1 + expert_epochs epochs. Pixels: SGD lr_img momentum
    0.5; alpha: SGD lr_lr momentum 0.5, initialised to lr_teacher. With eval_every > 0 the set is
    scored on (val_x, val_y) at iteration 0, every eval_every iterations and at the end
    (`eval_models` fresh models, `eval_epochs` epochs, the learned lr, momentum 0.9, wd 5e-4, DSA)
    and the best one is returned; bit-identical for the same inputs, seed and device. Runs on
    real_x's device (val_x may stay on the CPU); the loss and lr of each iteration are read back
    in batches, per iteration only when `progress` is given; on_step (iterations done, iterations)
    reads nothing back.
    """
    channels, size = _check_images(real_x, real_y, num_classes, "real images")
    if iterations < 0 or syn_steps < 1 or expert_epochs < 1 or max_start_epoch < 1:
        raise DsimError(
            "need iterations >= 0, syn_steps >= 1, expert_epochs >= 1 and max_start_epoch >= 1, "
            f"got {iterations}, {syn_steps}, {expert_epochs}, {max_start_epoch}"
        )
    if batch_syn is not None and batch_syn < 1:
        raise DsimError(f"batch_syn must be >= 1, got {batch_syn}")
    if lr_teacher <= 0:
        raise DsimError(f"lr_teacher (the initial student lr) must be > 0, got {lr_teacher}")
    if eval_every < 0:
        raise DsimError(f"eval_every must be >= 0, got {eval_every}")
    if eval_every and (val_x is None or val_y is None):
        raise DsimError("eval_every > 0 needs a validation set (val_x, val_y)")
    if eval_every:
        _check_images(val_x, val_y, num_classes, "validation images")
    device = real_x.device
    net = student_net(model, channels, num_classes, size, device=device)
    _check_experts(experts, net.num_params, max_start_epoch + expert_epochs)

    init_x, labels = init_from_real(real_x, real_y.long(), ipc, derive_seed(seed, -2))
    images = init_x.requires_grad_(True)
    alpha = torch.full((), float(lr_teacher), device=device).requires_grad_(True)
    opt_img = torch.optim.SGD([images], lr=lr_img, momentum=0.5)
    opt_lr = torch.optim.SGD([alpha], lr=lr_lr, momentum=0.5)
    gen = torch.Generator().manual_seed(derive_seed(seed, -1))

    def score() -> float:
        result = evaluate_synthetic(
            images.detach(), labels, val_x, val_y, num_models=eval_models, epochs=eval_epochs,
            model=model, seed=derive_seed(seed, -3), lr=float(alpha.detach()), dsa_strategy=dsa_strategy,
            num_classes=num_classes,
        )  # fmt: skip
        return result["mean"]

    best = MTTResult(images.detach().clone(), labels, float(alpha.detach()), math.nan, 0)
    if eval_every:
        best.best_accuracy = best.initial_accuracy = score()
    pending: list[tuple[dict, torch.Tensor, torch.Tensor]] = []  # history entries still on device
    if on_step is not None:
        on_step(0, iterations)

    def settle() -> None:
        """Fill the pending entries' loss and lr: one read-back for many iterations."""
        if pending:
            losses = torch.stack([loss for _, loss, _ in pending]).tolist()
            lrs = torch.stack([lr for _, _, lr in pending]).tolist()
            for (entry, _, _), loss, lr in zip(pending, losses, lrs, strict=True):
                entry["loss"], entry["lr"] = loss, lr
            pending.clear()

    for it in range(1, iterations + 1):
        k = int(torch.randint(len(experts), (1,), generator=gen))
        t = int(torch.randint(max_start_epoch, (1,), generator=gen))
        expert = experts[k]
        loss = matching_loss(
            net, images, labels, alpha, expert.epoch(t, device),
            expert.epoch(t + expert_epochs, device), syn_steps=syn_steps, batch_syn=batch_syn,
            dsa_strategy=dsa_strategy, generator=gen,
        )  # fmt: skip
        opt_img.zero_grad(set_to_none=True)
        opt_lr.zero_grad(set_to_none=True)
        loss.backward()
        opt_img.step()
        opt_lr.step()
        with torch.no_grad():
            alpha.clamp_(min=MIN_LR)
        entry = {"iteration": it, "loss": math.nan, "lr": math.nan, "expert": k, "start_epoch": t}
        pending.append((entry, loss.detach(), alpha.detach().clone()))
        del loss
        evaluate_now = eval_every and (it % eval_every == 0 or it == iterations)
        if progress is not None or evaluate_now:
            settle()  # a device sync: only when someone reads the values now
        if evaluate_now:
            entry["val_accuracy"] = accuracy = score()
            if accuracy > best.best_accuracy:
                best.images, best.lr = images.detach().clone(), float(alpha.detach())
                best.best_accuracy, best.best_iteration = accuracy, it
        best.history.append(entry)
        if progress is not None:
            progress(dict(entry))
        if on_step is not None:
            on_step(it, iterations)

    settle()
    if not eval_every:
        best.images, best.lr, best.best_iteration = (
            images.detach().clone(),
            float(alpha.detach()),
            iterations,
        )
    return best
