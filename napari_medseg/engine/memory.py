"""How many slices go into one inference batch: a memory budget and the network's measured cost per slice.

``batch_size="auto"`` (the :class:`~.infer.Predictor` default) takes the largest batch whose activations fit
in a fraction of the memory the device has free, capped per device kind:

* the cost per sample is measured once per input shape with a batch of one: on CUDA the allocator's peak
  above what was allocated before; elsewhere the bytes of every module output of that forward pass added
  up (an upper bound: without autograd most of them are freed before the pass ends) **(our choice)**;
* free memory: ``torch.cuda.mem_get_info`` on CUDA, the system's available memory (``psutil``) on the CPU
  and on Apple silicon (unified memory);
* caps: 64 on CUDA / MPS; 2 on the CPU, where larger batches do not run faster per slice: at one thread
  the best batch was 1 (U-Net), 2 (LSTMSA) or 4 (bilateral, BCDU-Net), and 2 stays within 9 % of each
  network's best where 4 was up to 26 % and 8 up to 59 % slower (``benchmarks/inference.py``,
  docs/benchmarks.md) **(our choice)**.

A batch that still runs out of memory is halved and retried by the Predictor, down to one slice.
"""

from __future__ import annotations

import torch

BUDGET_FRACTION = 0.5
CAPS = {"cuda": 64, "mps": 64, "cpu": 2}


def available_bytes(device: torch.device) -> int:
    """Memory free for activations on ``device``, in bytes."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def per_sample_bytes(model: torch.nn.Module, sample: torch.Tensor, device: torch.device, autocast) -> int:
    """Activation bytes of one forward pass of ``model`` on one ``sample`` (C, H, W) on ``device``, under
    the ``autocast`` context factory the Predictor runs with."""
    x = sample[None].to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad(), autocast():
            model(x)
        torch.cuda.synchronize(device)
        return max(1, torch.cuda.max_memory_allocated(device) - before)
    total = [x.numel() * x.element_size()]

    def count(_module, _inputs, output):
        for t in (output if isinstance(output, (tuple, list)) else [output]):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad(), autocast():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return max(1, total[0])


def batch_for_budget(per_sample: int, available: int, device_type: str, fraction: float = BUDGET_FRACTION) -> int:
    """The largest batch with ``per_sample * batch <= fraction * available``, at least 1, at most the
    device kind's cap (:data:`CAPS`)."""
    if per_sample <= 0 or available <= 0:
        raise ValueError("per-sample and available memory must be positive")
    fits = int(fraction * available // per_sample)
    return max(1, min(CAPS.get(device_type, CAPS["cpu"]), fits))
