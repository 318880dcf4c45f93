"""The names a user can choose from (devices, precisions, losses, schedules, runtimes, export formats), in
one place and without torch: the CLI's argument parser and the widgets' drop-downs read them from here, the
engine modules that act on them (``devices``, ``losses``, ``train``, ``runtime``) check against the same
tuples, so a new choice is added once."""

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # fp16: CUDA only (training), see engine/devices.py
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")  # predict, label-discs, evaluate
SEGMENTATION_LOSSES = ("dice_ce", "ce", "bce")
LOSSES = SEGMENTATION_LOSSES + ("heatmap_mse",)
# learning-rate schedules (engine/train.py::build_scheduler)
SCHEDULES = ("constant", "poly0.9", "plateau0.1p7", "milestones", "cosine")
RUNTIMES = ("auto", "torch", "onnxruntime")  # inference (engine/runtime.py)
EXPORT_FORMATS = ("onnx", "torchscript")
