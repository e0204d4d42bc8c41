"""dsim.ml on any device: results on the input's device, no CPU tensor mixed in, no read-back per step.

Every test runs on each device present: "cpu" always, "cuda" when torch sees one (else skipped), and
"emulated", a second device emulated on this CPU. A GPU-less machine cannot catch a CPU tensor
mixed into device code by running it (everything is on the CPU), so `Emu` tensors hold real CPU data
but report device "meta": `x.device` is then not the CPU, and code that builds a tensor without
`device=x.device` makes a plain CPU tensor. `DeviceAudit`, a TorchDispatchMode, runs every aten op
on the data behind the wrappers and fails any op that mixes them with a CPU tensor (0-dim ones
included: CUDA would accept those, but they are host values in device code), as CUDA fails on a
CPU tensor in a CUDA op; only explicit copies (`.to`, `.cpu`, `copy_`) cross, and are counted:
host-to-device copies, and device-to-host reads (`.item()`, `.tolist()`, `nonzero`, ...), each a GPU
sync. So the emulated runs prove devices are propagated, count the copies per DSA call and show
that nothing is read back per DM / refinement / training step. (torch's own "meta" tensors carry no
data, so they cannot run data-dependent code such as sampling by label; FakeTensorMode neither.)
`test_the_audit_fails_on_reintroduced_cpu_tensors` re-creates known device bugs and checks that the
audit catches each. CUDA-only tests (skipped without a GPU) add determinism: the same seed twice
gives identical results.
"""

from __future__ import annotations

import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

import dsim.ml.dm as dm_module
import dsim.ml.dsa as dsa_module
import dsim.ml.mtt as mtt_module
import dsim.ml.train as train_module
from dsim.ml.device import ACCELERATOR_CHUNK, CPU_CHUNK, default_chunk, deterministic
from dsim.ml.dm import (
    aggregate_client_means,
    class_counts,
    client_mean_embeddings,
    collab_objective,
    distill_dm,
    frozen_net,
    init_from_real,
    server_refine,
)
from dsim.ml.dsa import DEFAULT_STRATEGY, OPS, augment
from dsim.ml.evaluate import evaluate, evaluate_synthetic
from dsim.ml.models import build_model, flat_params, model_device
from dsim.ml.mtt import distill_mtt, matching_loss, student_net, train_experts
from dsim.ml.train import train_model

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, before CUDA starts
torch.set_num_threads(1)

MODEL = {"width": 8}
SIZE, CLASSES = 8, 3
STRATEGY = "color_crop_cutout_scale_rotate"
NO_WARP = "color_crop_cutout_flip"  # ops whose CUDA kernels are deterministic even without the flag
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")


# ------------------------------------------------------------------ the emulated second device

EMULATED = torch.device("meta")
_READ_BACK_OPS = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive",
                  "masked_select"}  # fmt: skip
_METADATA_INPLACE = {"unsqueeze_", "squeeze_", "transpose_", "t_", "as_strided_", "swapdims_",
                     "swapaxes_", "resize_", "resize_as_"}  # fmt: skip


class DeviceMixing(AssertionError):
    """An op got tensors of the (emulated) device and of the CPU."""


class Emu(torch.Tensor):
    """A tensor of the emulated device: real CPU data (`elem`) behind a wrapper reporting 'meta'."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> Emu:
        if type(elem) is not torch.Tensor or elem.device.type != "cpu":
            raise AssertionError(f"Emu wraps plain CPU tensors, got {type(elem)} on {elem.device}")
        out = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=EMULATED, requires_grad=elem.requires_grad,
        )  # fmt: skip
        out.elem = elem
        return out

    def __repr__(self) -> str:
        return f"Emu({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"an emulated-device tensor was used outside DeviceAudit: {func}")


def _to_emulated(device) -> bool:
    return device is not None and torch.device(device) == EMULATED


class _HostData(TorchFunctionMode):
    """torch.tensor(data, device=...) and .tolist() skip the dispatcher: route them through it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and _to_emulated(kwargs.get("device")):
            kwargs = {k: v for k, v in kwargs.items() if k != "device"}
            return func(*args, **kwargs).to(EMULATED)  # host data copied over, as on CUDA
        if func in (torch.Tensor.tolist, torch.Tensor.numpy) and isinstance(args[0], Emu):
            return func(args[0].cpu(), *args[1:], **kwargs)  # the read-back is counted by .cpu()
        return func(*args, **kwargs)


class DeviceAudit(TorchDispatchMode):
    """Runs Emu tensors on their CPU data; fails on mixing; counts copies and read-backs."""

    def __init__(self) -> None:
        super().__init__()
        self.to_device = 0  # host -> device copies
        self.read_backs = 0  # device -> host copies and data-dependent reads (syncs on a GPU)
        self._host_data = _HostData()

    def __enter__(self) -> DeviceAudit:
        super().__enter__()
        self._host_data.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._host_data.__exit__(*exc)
        super().__exit__(*exc)

    def counts(self) -> tuple[int, int]:
        return self.to_device, self.read_backs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        flat, _ = tree_flatten((args, kwargs))
        emu = [t for t in flat if isinstance(t, Emu)]
        plain = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, Emu)]
        if any(t.device.type == "meta" for t in plain):
            raise DeviceMixing(f"{func}: a data-less meta tensor was made behind the audit's back")
        if emu and plain:
            if name != "copy_":  # copy_ is the explicit cross-device copy
                shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in plain)
                raise DeviceMixing(f"{func} mixes device tensors with CPU tensors {shapes}")
            if isinstance(args[0], Emu):
                self.to_device += 1
            else:
                self.read_backs += 1
        device = kwargs.get("device")
        to_emulated = _to_emulated(device)
        if not emu and not to_emulated:
            return func(*args, **kwargs)
        inner_args, inner_kwargs = tree_map(lambda t: t.elem if isinstance(t, Emu) else t, (args, kwargs))
        if to_emulated:
            inner_kwargs["device"] = torch.device("cpu")
            if not emu and name == "_to_copy":
                self.to_device += 1
        out = func(*inner_args, **inner_kwargs)
        if name in _METADATA_INPLACE and isinstance(args[0], Emu):
            with torch._C._DisableTorchDispatch():  # the wrapper's sizes follow (its meta kernel)
                func(*args, **kwargs)
        if emu and device is not None and torch.device(device).type == "cpu":
            self.read_backs += 1
            return out  # an explicit copy to the host
        if emu and name in _READ_BACK_OPS:
            self.read_backs += 1
        if name == "copy_" and not isinstance(args[0], Emu):
            return args[0]
        return tree_map(lambda t: Emu(t) if type(t) is torch.Tensor else t, out)


# ------------------------------------------------------------------ devices under test


@dataclass
class Target:
    kind: str  # "cpu", "emulated" or "cuda"

    def __post_init__(self) -> None:
        self.audit = DeviceAudit() if self.kind == "emulated" else None
        self.device = {"cpu": torch.device("cpu"), "emulated": EMULATED}.get(
            self.kind, torch.device("cuda")
        )

    def running(self):
        """The block the device's tensors live in (the audit, for the emulated device)."""
        return self.audit if self.audit is not None else nullcontext()

    def put(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)

    def holds(self, t: torch.Tensor) -> bool:
        if self.kind == "emulated":
            return isinstance(t, Emu)
        return not isinstance(t, Emu) and t.device.type == self.device.type

    def counts(self) -> tuple[int, int] | None:
        return self.audit.counts() if self.audit is not None else None


@pytest.fixture(
    params=["cpu", "emulated", pytest.param("cuda", marks=needs_cuda)],
)
def target(request) -> Target:
    return Target(request.param)


def assert_on(target: Target, *tensors: torch.Tensor) -> None:
    for t in tensors:
        assert target.holds(t), f"expected a tensor on {target.kind}, got {type(t).__name__} on {t.device}"


def host(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu()


def make_data(per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(CLASSES, 1, 4, 4, generator=torch.Generator().manual_seed(99))
    protos = 2 * F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    y = torch.arange(CLASSES).repeat_interleave(per_class)
    return protos[y] + 0.5 * torch.randn(len(y), 1, SIZE, SIZE, generator=gen), y


def per_step(target: Target, run, short: int, long: int) -> tuple[float, int] | None:
    """(host-to-device copies, read-backs) added by each step beyond `short` steps (emulated only)."""
    if target.audit is None:
        run(short)
        return None
    before = target.audit.counts()
    run(short)
    middle = target.audit.counts()
    run(long)
    after = target.audit.counts()
    copies = ((after[0] - middle[0]) - (middle[0] - before[0])) / (long - short)
    reads = (after[1] - middle[1]) - (middle[1] - before[1])
    return copies, reads


# ------------------------------------------------------------------ the audit itself


def test_the_audit_fails_on_mixing_and_counts_copies():
    with DeviceAudit() as audit:
        x = torch.randn(4, 3).to(EMULATED)
        assert isinstance(x, Emu) and x.device == EMULATED and audit.counts() == (1, 0)
        y = x + torch.zeros(4, 3, device=x.device)  # made on the device: fine
        assert isinstance(y, Emu) and torch.equal(y.cpu(), x.cpu())
        assert audit.counts() == (1, 2)
        with pytest.raises(DeviceMixing):
            x + torch.ones(3)
        with pytest.raises(DeviceMixing):
            x * torch.tensor(2.0)  # a 0-dim host tensor is refused too
        with pytest.raises(DeviceMixing):
            x[torch.tensor([0, 2])]  # a host index (CUDA would copy it over per call)
        made = torch.tensor([1.0, 2.0], device=x.device)  # host data copied over: counted
        assert isinstance(made, Emu) and made.tolist() == [1.0, 2.0]
        float(x.sum())
        assert audit.counts() == (2, 4)  # + .tolist() and float()
        w = torch.randn(3, requires_grad=True).to(x.device)
        (x * w).sum().backward()  # autograd runs through the audit too
        net = torch.nn.Linear(3, 2).to(x.device)
        net(x).sum().backward()
        assert isinstance(net.weight.grad, Emu)


# ------------------------------------------------------------------ models and augmentation


def test_models_are_built_from_the_seed_then_moved(target):
    reference = build_model(MODEL, 1, CLASSES, SIZE, seed=4)
    with target.running():
        net = build_model(MODEL, 1, CLASSES, SIZE, seed=4, device=target.device)
        frozen = frozen_net(MODEL, 1, CLASSES, SIZE, 4, device=target.device)
        assert_on(target, *net.parameters(), *frozen.parameters())
        assert model_device(net).type == target.device.type
        assert torch.equal(host(flat_params(net)), flat_params(reference))  # same seed, same net
        assert torch.equal(host(flat_params(frozen)), flat_params(reference))
    assert default_chunk("cpu") == CPU_CHUNK == 16
    assert default_chunk("cuda") == default_chunk(EMULATED) == ACCELERATOR_CHUNK


@pytest.mark.parametrize("strategy", [*OPS, DEFAULT_STRATEGY])
def test_augment_copies_its_draws_once_and_keeps_the_siamese_property(target, strategy):
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reference = [augment(x, strategy, seed) for seed in range(6)]
    per_image = augment(x, strategy, generator=torch.Generator().manual_seed(1))
    with target.running():
        dx = target.put(x)
        for seed in range(6):
            before = target.counts()
            out = augment(dx, strategy, seed)
            if before is not None:
                copies, reads = (a - b for a, b in zip(target.counts(), before, strict=True))
                assert copies <= 1 and reads == 0, (strategy, seed, copies, reads)
            assert_on(target, out)
            # the same parameters on every device: the CPU draws are reused, not re-drawn
            assert torch.allclose(host(out), reference[seed], atol=1e-5), (strategy, seed)
            half = augment(dx[:3], strategy, seed)  # another batch size: the same transformation
            assert torch.allclose(host(half), host(out[:3]), atol=1e-6)
        before = target.counts()
        out = augment(dx, strategy, generator=torch.Generator().manual_seed(1))
        if before is not None:
            assert target.counts()[0] - before[0] <= 1 and target.counts()[1] == before[1]
        assert_on(target, out)
        assert torch.allclose(host(out), per_image, atol=1e-5)


def test_gradients_reach_device_pixels_through_every_op(target):
    with target.running():
        x = target.put(torch.randn(4, 1, SIZE, SIZE)).requires_grad_(True)
        for op in OPS:
            for seed in (3, None):
                x.grad = None
                gen = torch.Generator().manual_seed(5)
                augment(x, op, seed, generator=gen).square().sum().backward()
                assert_on(target, x.grad)
                assert float(x.grad.abs().sum()) > 0, op


# ------------------------------------------------------------------ DM and CollabDM


def test_init_from_real_puts_images_and_labels_on_the_device(target):
    x, y = make_data(5)
    ref_x, ref_y = init_from_real(x, y, 4, seed=3, pae_factor=2)
    with target.running():
        sx, sy = init_from_real(target.put(x), target.put(y), 4, seed=3, pae_factor=2)
        assert_on(target, sx, sy)
        assert torch.equal(host(sx), ref_x) and torch.equal(host(sy), ref_y)
        hx, hy = init_from_real(target.put(x), y, 4, seed=3, pae_factor=2)  # labels on the host
        assert_on(target, hx, hy)


@pytest.mark.parametrize(
    "options",
    [{}, {"pae_factor": 2, "match_std": True}, {"per_class_loop": True}, {"chunk": 5}],
    ids=["batched", "pae_std", "per_class_loop", "chunk5"],
)
def test_distill_dm_stays_on_the_device_without_read_backs(target, options):
    x, y = make_data(20)
    sx, sy = init_from_real(x, y, 2, seed=1, pae_factor=options.get("pae_factor"))
    kw = {"batch_real": 8, "model": MODEL, "dsa_strategy": STRATEGY, "seed": 2, **options}
    reference = distill_dm(sx, sy, x, y, iterations=3, **kw)
    with target.running():
        dx, dy, dsx, dsy = (target.put(t) for t in (x, y, sx, sy))
        out = distill_dm(dsx, dsy, dx, dy, iterations=3, **kw)
        assert_on(target, out)
        update = (reference - sx).abs().max()
        assert (host(out) - reference).abs().max() <= 1e-3 * update  # float rounding only
        steps = per_step(target, lambda n: distill_dm(dsx, dsy, dx, dy, iterations=n, **kw), 1, 3)
        if steps is not None:
            copies, reads = steps
            assert reads == 0, "a device value is read back in every DM iteration"
            tensors = len(list(frozen_net(MODEL, 1, CLASSES, SIZE, 0).parameters()))
            # the network's tensors, one index copy for the real batches, DSA draws <= 1 per call
            assert copies <= tensors + 1 + 2 * CLASSES, copies
        seen = []
        distill_dm(dsx, dsy, dx, dy, iterations=2, progress=lambda i, v: seen.append(v), **kw)
        assert len(seen) == 2 and all(isinstance(v, float) for v in seen)


def test_collabdm_client_means_and_server_refine_on_the_device(target):
    clients = [make_data(10, seed=s) for s in (1, 2)]
    seeds = [11, 12, 13]
    kw = {"batch": 8, "model": MODEL, "dsa_strategy": STRATEGY}
    ref_means = [client_mean_embeddings(x, y, seeds, CLASSES + 1, **kw) for x, y in clients]
    targets, present = {}, {}
    for t, seed in enumerate(seeds):  # the server gets the clients' means over the wire: CPU tensors
        targets[seed], present[seed] = aggregate_client_means(
            [m[t] for m in ref_means], [class_counts(y, CLASSES + 1) for _, y in clients]
        )
    syn_x, syn_y = init_from_real(*clients[0], 2, seed=5)
    srv = {"num_classes": CLASSES + 1, "present": present, "model": MODEL, "dsa_strategy": STRATEGY}
    reference = server_refine(syn_x, syn_y, targets, lr=1.0, **srv)
    ref_objective = collab_objective(reference, syn_y, targets, **srv)
    with target.running():
        (x, y) = (target.put(t) for t in clients[0])
        means = client_mean_embeddings(x, y, seeds, CLASSES + 1, **kw)
        assert_on(target, means)
        assert torch.allclose(host(means), ref_means[0], atol=1e-5)
        assert torch.equal(host(means[:, CLASSES]), torch.zeros(len(seeds), means.shape[-1]))
        steps = per_step(target, lambda n: client_mean_embeddings(x, y, seeds[:n], 4, **kw), 1, 3)
        assert steps is None or steps[1] == 0, "a read-back per client seed"
        agg, has = aggregate_client_means(
            [target.put(m[0]) for m in ref_means], [class_counts(y, CLASSES + 1) for _, y in clients]
        )  # means on the device, counts on the host
        assert_on(target, agg, has)
        dsx, dsy = target.put(syn_x), target.put(syn_y)
        refined = server_refine(dsx, dsy, targets, lr=1.0, **srv)
        assert_on(target, refined)
        update = (reference - syn_x).abs().max()
        assert (host(refined) - reference).abs().max() <= 1e-3 * update
        objective = collab_objective(refined, dsy, targets, **srv)
        assert objective == pytest.approx(ref_objective, rel=1e-3)
        pae = server_refine(dsx, dsy, targets, lr=1.0, pae_factor=2, **srv)
        assert_on(target, pae)
        ordered = list(targets.items())
        steps = per_step(
            target, lambda n: server_refine(dsx, dsy, ordered[:n], lr=1.0, **srv), 1, 3
        )
        assert steps is None or steps[1] == 0, "a read-back per server step"


# ------------------------------------------------------------------ training and evaluation


def test_train_and_evaluate_on_the_device_read_back_once(target):
    x, y = make_data(8, seed=3)
    test_x, test_y = make_data(20, seed=4)
    train_kw = {"batch": 8, "dsa_strategy": STRATEGY, "seed": 1}
    ref_net = build_model(MODEL, 1, CLASSES, SIZE, seed=0)
    ref_loss = train_model(ref_net, x, y, epochs=3, **train_kw)
    eval_kw = {"num_models": 2, "epochs": 3, "model": MODEL, "seed": 2, "dsa_strategy": STRATEGY}
    ref_score = evaluate_synthetic(x, y, test_x, test_y, **eval_kw)
    with target.running():
        dx, dy = target.put(x), target.put(y)
        net = build_model(MODEL, 1, CLASSES, SIZE, seed=0)  # on the CPU: moved to the data
        loss = train_model(net, dx, y, epochs=3, **train_kw)
        assert_on(target, *net.parameters())
        assert isinstance(loss, float) and loss == pytest.approx(ref_loss, rel=1e-4)
        assert torch.allclose(host(flat_params(net)), flat_params(ref_net), atol=1e-5)
        accuracy = evaluate(net, test_x, test_y)  # a CPU test set is streamed over
        assert accuracy == pytest.approx(evaluate(ref_net, test_x, test_y), abs=0.05)

        def train(epochs: int) -> None:
            train_model(build_model(MODEL, 1, CLASSES, SIZE, 0), dx, dy, epochs=epochs, **train_kw)

        steps = per_step(target, train, 1, 3)
        assert steps is None or steps[1] == 0, "a read-back per training epoch"
        for tx, ty in ((test_x, test_y), (target.put(test_x), target.put(test_y))):
            score = evaluate_synthetic(dx, dy, tx, ty, **eval_kw)
            assert score["mean"] == pytest.approx(ref_score["mean"], abs=0.05)


# ------------------------------------------------------------------ MTT


def test_mtt_experts_and_distillation_on_the_device(target):
    x, y = make_data(12, seed=5)
    expert_kw = {"num_experts": 2, "epochs": 3, "num_classes": CLASSES, "model": MODEL, "batch": 12,
                 "dsa_strategy": STRATEGY}  # fmt: skip
    ref_experts = train_experts(x, y, **expert_kw)
    mtt_kw = {"ipc": 1, "num_classes": CLASSES, "model": MODEL, "syn_steps": 3,
              "dsa_strategy": STRATEGY, "seed": 1}  # fmt: skip
    reference = distill_mtt(x, y, ref_experts, iterations=2, **mtt_kw)
    with target.running():
        dx, dy = target.put(x), target.put(y)
        experts = train_experts(dx, dy, **expert_kw)
        for mine, ref in zip(experts, ref_experts, strict=True):
            assert mine.params.device.type == "cpu"  # buffers stay on the host by design
            assert not isinstance(mine.params, Emu)
            assert torch.allclose(mine.params, ref.params, atol=1e-4)
        result = distill_mtt(dx, dy, ref_experts, iterations=2, **mtt_kw)
        assert_on(target, result.images, result.labels)
        assert torch.allclose(host(result.images), reference.images, atol=1e-3)
        for mine, ref in zip(result.history, reference.history, strict=True):
            assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-3)
            assert mine["lr"] == pytest.approx(ref["lr"], rel=1e-4)
        steps = per_step(
            target, lambda n: distill_mtt(dx, dy, ref_experts, iterations=n, **mtt_kw), 1, 3
        )
        assert steps is None or steps[1] == 0, "a read-back per MTT iteration without progress"
        net = student_net(MODEL, 1, CLASSES, SIZE, device=target.device)
        images = target.put(result.images).requires_grad_(True)
        lr = torch.full((), 0.01, device=target.device, requires_grad=True)
        start, end = ref_experts[0].epoch(0, target.device), ref_experts[0].epoch(2, target.device)
        assert_on(target, start, end)
        loss = matching_loss(net, images, target.put(result.labels), lr, start, end, syn_steps=2)
        loss.backward()
        assert_on(target, loss, images.grad, lr.grad)


# ------------------------------------------------------------------ the audit catches the bugs


def _old_segment_stats(emb, sizes, with_std):
    """The segment statistics as they were: counts for repeat_interleave built on the CPU."""
    counts = torch.tensor(sizes, dtype=emb.dtype, device=emb.device)
    ids = torch.repeat_interleave(torch.arange(len(sizes), device=emb.device), torch.tensor(sizes))
    mean = emb.new_zeros(len(sizes), emb.shape[1]).index_add(0, ids, emb) / counts[:, None]
    return mean, None


def _model_left_on_the_host(spec, channels, num_classes, image_size, seed, *, device=None):
    return _build_model(spec, channels, num_classes, image_size, seed)


_build_model = build_model


def _run_dm(x, y, sx, sy) -> None:
    distill_dm(sx, sy, x, y, iterations=1, batch_real=4, model=MODEL)


def _run_evaluation(x, y, sx, sy) -> None:
    evaluate_synthetic(sx, sy, x, y, num_models=1, epochs=1, model=MODEL)


def _run_mtt(x, y, sx, sy) -> None:
    experts = train_experts(x.cpu(), y, num_experts=1, epochs=3, num_classes=CLASSES, model=MODEL)
    distill_mtt(x, y, experts, ipc=1, iterations=1, num_classes=CLASSES, model=MODEL, syn_steps=2)


def _identity(t, device, dtype=None):
    return t if dtype is None else t.to(dtype)


@pytest.mark.parametrize(
    ("module", "name", "bug", "run"),
    [
        (dm_module, "_segment_stats", _old_segment_stats, _run_dm),
        (dsa_module, "to_device", _identity, _run_dm),
        (dm_module, "build_model", _model_left_on_the_host, _run_dm),
        (train_module, "to_device", _identity, _run_evaluation),
        (mtt_module, "to_device", _identity, _run_mtt),
    ],
    ids=["segment_counts_on_cpu", "dsa_draws_on_cpu", "frozen_net_on_cpu", "shuffle_on_cpu",
         "expert_snapshots_on_cpu"],  # fmt: skip
)
def test_the_audit_fails_on_reintroduced_cpu_tensors(monkeypatch, module, name, bug, run):
    x, y = make_data(6)
    sx, sy = init_from_real(x, y, 1, seed=0)
    with DeviceAudit():
        run(x.to(EMULATED), y, sx.to(EMULATED), sy)  # as shipped: passes
    monkeypatch.setattr(module, name, bug)
    with DeviceAudit(), pytest.raises(DeviceMixing):
        run(x.to(EMULATED), y, sx.to(EMULATED), sy)


def test_the_audit_fails_on_a_cpu_output_buffer(monkeypatch):
    """client_mean_embeddings once allocated its output on the CPU."""
    x, y = make_data(6)
    real_zeros = torch.zeros

    def zeros_on_cpu(*size, **kw):
        kw.pop("device", None)
        return real_zeros(*size, **kw)

    with DeviceAudit():
        client_mean_embeddings(x.to(EMULATED), y, [1], CLASSES, batch=4, model=MODEL)
    monkeypatch.setattr(dm_module.torch, "zeros", zeros_on_cpu)
    with DeviceAudit(), pytest.raises(DeviceMixing):
        client_mean_embeddings(x.to(EMULATED), y, [1], CLASSES, batch=4, model=MODEL)


# ------------------------------------------------------------------ CUDA: determinism


def _twice(fn):
    with deterministic():
        return fn(), fn()


@needs_cuda
@pytest.mark.parametrize("strategy", [NO_WARP, STRATEGY])
def test_cuda_dm_client_means_and_server_are_deterministic(strategy):
    x, y = make_data(20)
    x, y = x.cuda(), y.cuda()
    sx, sy = init_from_real(x, y, 2, seed=1)
    kw = {"iterations": 3, "batch_real": 8, "model": MODEL, "dsa_strategy": strategy, "seed": 4}
    a, b = _twice(lambda: distill_dm(sx, sy, x, y, **kw))
    assert a.device.type == "cuda" and torch.equal(a, b)
    pa, pb = _twice(lambda: distill_dm(sx, sy, x, y, pae_factor=2, match_std=True, **kw))
    assert torch.equal(pa, pb)
    means = _twice(lambda: client_mean_embeddings(x, y, [3, 4], CLASSES, batch=8, model=MODEL))
    assert means[0].device.type == "cuda" and torch.equal(*means)
    targets = {3: means[0][0].cpu(), 4: means[0][1].cpu()}
    refined = _twice(lambda: server_refine(sx, sy, targets, num_classes=CLASSES, model=MODEL))
    assert refined[0].device.type == "cuda" and torch.equal(*refined)


@needs_cuda
def test_cuda_evaluation_and_mtt_are_deterministic():
    x, y = make_data(12, seed=2)
    x, y = x.cuda(), y.cuda()
    kw = {"num_models": 2, "epochs": 3, "model": MODEL, "dsa_strategy": STRATEGY}
    scores = _twice(lambda: evaluate_synthetic(x, y, x.cpu(), y.cpu(), **kw))
    assert scores[0] == scores[1]
    experts = _twice(
        lambda: train_experts(x, y, num_experts=1, epochs=3, num_classes=CLASSES, model=MODEL,
                              dsa_strategy=STRATEGY)  # fmt: skip
    )
    assert torch.equal(experts[0][0].params, experts[1][0].params)
    mtt_kw = {"ipc": 1, "iterations": 2, "num_classes": CLASSES, "model": MODEL, "syn_steps": 3,
              "dsa_strategy": STRATEGY}  # fmt: skip
    a, b = _twice(lambda: distill_mtt(x, y, experts[0], **mtt_kw))
    assert a.images.device.type == "cuda" and torch.equal(a.images, b.images)
    assert a.history == b.history and a.lr == b.lr


@needs_cuda
def test_cuda_dm_loop_does_not_synchronise_per_iteration():
    """torch's CUDA sync debug mode warns on every synchronising call: the count must not grow
    with the number of iterations (set-up reads labels once; progress=None reads nothing)."""
    x, y = make_data(20)
    x, y = x.cuda(), y.cuda()
    sx, sy = init_from_real(x, y, 2, seed=1)

    def syncs(iterations: int) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                distill_dm(sx, sy, x, y, iterations=iterations, batch_real=8, model=MODEL)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    syncs(1)  # warm-up: CUDA, cuBLAS and cuDNN initialise on the first call
    assert syncs(1) == syncs(4)
