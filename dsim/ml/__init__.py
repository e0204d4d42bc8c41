"""Learning library (pure functions, no networking) for the distillation workloads.

- models: ConvNet of the distillation papers, seeded construction, flat parameter vectors.
- dsa: differentiable siamese augmentation with seed-derived (never global) randomness.
- pae: partition-and-expand of synthetic images.
- dm: distribution matching (LocalDM) and the CollabDM client means / server refinement.
- mtt: matching training trajectories (expert buffers, unrolled student, learned lr).
- train, evaluate: SGD/Adam training on tensors; scoring a synthetic set with fresh ConvNets.
- device: per-device defaults (chunk sizes), host-to-device copies without a sync, reproducible
  kernels. Every function runs on the device of its tensor inputs (see device's docstring).
"""

from collections.abc import Callable

StepFn = Callable[[int, int], None]
"""The loops' optional `on_step` callback: (steps done, total steps), called with (0, total) before the
first step and after each one. It reads nothing back from the device, so it costs no sync."""
