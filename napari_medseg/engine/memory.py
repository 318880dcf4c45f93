"""How many slices go into one inference batch: a memory budget and the network's measured cost per slice.

``batch_size="auto"`` (the :class:`~.infer.Predictor` default) takes the largest batch whose activations fit
in a fraction of the memory the device has free, capped per device kind:

* the cost per sample is measured once per input shape with a batch of one: on CUDA the allocator's peak
  above what was allocated before; elsewhere the bytes of every module output of that forward pass added
  up (an upper bound: without autograd most of them are freed before the pass ends) **(our choice)**;
  under the onnxruntime runtime the same sum is read from the exported graph (every value's shape, by
  ONNX shape inference, or one run of the graph for what it leaves unsized, at batch 1), so that the
  torch network is never built for it. On the bundled models the graph's sum is 0.94x (U-Nets) to 3.1x
  (BCDU-Net) the torch one: the graph also holds the functional operations between modules (LSTM gates,
  attention arithmetic) that module hooks do not see, so it is the more complete upper bound;
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
from ..io.errors import InvalidInput

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
        raise InvalidInput("per-sample and available memory must be positive")
    fits = int(fraction * available // per_sample)
    return max(1, min(CAPS.get(device_type, CAPS["cpu"]), fits))


def graph_sample_bytes(path) -> int:
    """Bytes of every floating-point value in the ONNX graph at ``path`` (inputs, intermediate values,
    outputs) for a batch of one: the CPU rule of :func:`per_sample_bytes` read from the graph instead of
    the torch network. Sizes come from ONNX shape inference; values it leaves unsized (MONAI's U-Net pads to
    the skip's size at run time) are sized by one run of the graph at batch 1 that returns them."""
    import numpy as np
    import onnx
    from onnx import helper, shape_inference

    model = onnx.load(str(path))
    graph = shape_inference.infer_shapes(model).graph
    batch_axis = {graph.input[0].type.tensor_type.shape.dim[0].dim_param} - {""}
    total, unsized = 0, []
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor, n = value.type.tensor_type, 1
        if not np.issubdtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type), np.floating):
            continue  # shape arithmetic (int64 indices), not activations
        for d in tensor.shape.dim:
            if d.HasField("dim_value"):
                n *= d.dim_value
            elif d.dim_param not in batch_axis:
                unsized.append(value)
                break
        else:
            total += n * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
    if unsized:
        import onnxruntime as ort

        from .runtime import session_options

        outputs = {v.name for v in model.graph.output}
        model.graph.output.extend(v for v in unsized if v.name not in outputs)
        first = graph.input[0]
        shape = [1] + [d.dim_value for d in first.type.tensor_type.shape.dim[1:]]
        dtype = helper.tensor_dtype_to_np_dtype(first.type.tensor_type.elem_type)
        session = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
        names = [v.name for v in unsized]
        total += sum(a.nbytes for a in session.run(names, {first.name: np.zeros(shape, dtype)}))
    return max(1, total)
