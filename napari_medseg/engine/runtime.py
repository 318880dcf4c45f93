"""Inference runtimes: the network in eager PyTorch, or exported to ONNX and run by onnxruntime (CPU).

Why: on CPUs the same network runs up to 2.5x faster in onnxruntime than in eager PyTorch (graph
optimisations and fused kernels; docs/benchmarks.md, ``benchmarks/runtime.py``). The choice per network is
measured, not assumed (``ModelInfo.cpu_runtime``), and a runtime may be chosen only where its labels are
those of eager fp32 (``benchmarks/runtime.py`` checks >= 99.9 % identical pixels on the test split and disc
positions within 0.5 px; ``tests/test_runtime.py`` on real inputs).

The exported graph is cached under the cache folder, keyed by the SHA-256 of the weights file and the input
shape, so the export (a few seconds) is paid once per checkpoint. onnxruntime computes in fp32: asking for
bf16 or fp16 with it is an error.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from ..io.errors import InvalidInput
from .choices import RUNTIMES
OPSET = 17


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def choose_runtime(requested: str, network: str, device: torch.device, precision: str) -> str:
    """The runtime a Predictor uses, given the *requested* precision (``auto``, ``fp32``, ``bf16``,
    ``fp16``). ``auto``: the network's measured CPU choice (``models.REGISTRY[network].cpu_runtime``) on a
    CPU where onnxruntime is installed, when fp32 is asked for, or ``auto`` on a CPU without bf16
    instructions (where eager would run fp32); on a CPU with AVX512-BF16/AMX, ``auto`` takes the choice
    measured against eager bf16 there (``bf16_cpu_runtime``: onnxruntime in fp32 for the U-Net, the
    bilateral network and the hourglass, eager bf16 for BCDU-Net and LSTMSA; docs/benchmarks.md); an
    explicit bf16 is eager; GPUs run torch. An explicit ``onnxruntime`` off the CPU, with a reduced
    precision asked for, or without the package is an error."""
    precision_name = "fp32" if precision == "auto" else precision
    from .. import models

    if requested not in RUNTIMES:
        raise InvalidInput(f"unknown runtime {requested!r}; choose from {', '.join(RUNTIMES)}")
    if requested == "torch":
        return "torch"
    if requested == "onnxruntime":
        if device.type != "cpu":
            raise InvalidInput(f"runtime 'onnxruntime' runs on the CPU; the device here is {device.type} "
                             "(use --runtime torch or --device cpu)")
        if precision_name != "fp32":
            raise InvalidInput(f"runtime 'onnxruntime' computes in fp32, not {precision_name} (use --precision fp32)")
        if not onnxruntime_available():
            raise InvalidInput("runtime 'onnxruntime' needs the onnxruntime package: pip install onnxruntime")
        return "onnxruntime"
    from . import devices

    info = models.REGISTRY.get(network)
    choice = info.cpu_runtime if info is not None else "torch"
    if choice != "onnxruntime" or device.type != "cpu" or not onnxruntime_available():
        return "torch"
    if precision == "fp32" or (precision == "auto" and not devices.cpu_has_fast_bf16()):
        return "onnxruntime"
    return info.bf16_cpu_runtime if precision == "auto" else "torch"  # a CPU with bf16 instructions


def weights_digest(weights_file: Path) -> str:
    return hashlib.sha256(Path(weights_file).read_bytes()).hexdigest()


def export_onnx(model: torch.nn.Module, sample: torch.Tensor, path: str | os.PathLike) -> Path:
    """Export ``model`` (eval mode) to ONNX at ``sample``'s shape, batch size dynamic; written atomically."""
    from ..io.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():  # a full disk: one line
        warnings.simplefilter("ignore")  # tracer warnings about Python values in shapes
        torch.onnx.export(model, (sample,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=["output"], dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}})
    return path


def export_torchscript(model: torch.nn.Module, sample: torch.Tensor, path: str | os.PathLike) -> Path:
    """A traced TorchScript file of ``model`` at ``sample``'s shape (``torch.jit.load`` reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import io as _io

    from ..io.atomic import atomic_path

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval(), (sample,), check_trace=False)
    buf = _io.BytesIO()  # torch's own file writer aborts the process on a full disk: write the bytes here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 calls TorchScript deprecated; it is asked for
        torch.jit.save(traced, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def session_options(threads: int | None = None):
    """onnxruntime options of every session we open: ``threads`` intra-op threads (default: torch's
    setting, so that ``--threads`` and ``OMP_NUM_THREADS`` hold for both runtimes), one inter-op thread,
    and no busy-waiting between runs: the threads would spin through our own pre- and post-processing and
    the reader thread (measured: 60 Kvasir images end to end 1.36 s with spinning, 0.95 s without, eager
    fp32 1.24 s; the network call alone 8.2 vs 9.4 ms)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxNetwork:
    """An ONNX graph behind the call of a torch network: ``net(x)`` takes and returns torch tensors (CPU)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        return torch.from_numpy(self.session.run(None, {self.input_name: x.numpy()})[0])


def onnx_cache_path(digest: str, sample_shape: tuple[int, ...], cache: Path | None = None) -> Path:
    """Where the graph of the weights with SHA-256 ``digest`` for inputs of ``sample_shape`` is cached."""
    from ..io.datasets import cache_dir

    shape = "x".join(str(int(s)) for s in sample_shape)
    return (cache or cache_dir() / "onnx") / f"{digest[:24]}-{shape}-opset{OPSET}.onnx"


def cached_onnx(model, sample_shape: tuple[int, ...], digest: str | None, cache: Path | None = None) -> Path:
    """The ONNX export of ``model`` for inputs of ``sample_shape`` (C, H, W), from the cache when it is
    there. Keyed by the weights file's SHA-256 (``digest``, :func:`weights_digest`; without one, a hash of
    the state dict) and the shape. ``model``: the network, or a function that builds it, called only when
    the graph has to be exported (a cached graph needs no torch network: no MONAI import at start-up)."""
    def network() -> torch.nn.Module:
        return model if isinstance(model, torch.nn.Module) else model()

    if digest is None:
        h = hashlib.sha256()
        for k, v in network().state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()
    path = onnx_cache_path(digest, sample_shape, cache)
    if not path.is_file():
        export_onnx(network(), torch.zeros((1, *sample_shape)), path)
    return path


class GraphCacheWarning(UserWarning):
    """A damaged graph in the cache was removed and rebuilt."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__


def open_cached_graph(model, sample_shape: tuple[int, ...], digest: str | None, cache: Path | None = None,
                      threads: int | None = None) -> OnnxNetwork:
    """:func:`cached_onnx` opened as an :class:`OnnxNetwork`, healing the cache: a cached graph that
    onnxruntime cannot load (a copy cut short, a full disk, a bad sector) is removed and exported again once,
    with a one-line warning; if the rebuilt graph cannot be loaded either, a one-line error naming the file
    (``MedSegIOError``: the CLI's exit 2), nothing else touched."""
    from ..io.errors import MedSegIOError

    path = cached_onnx(model, sample_shape, digest, cache)
    try:
        return OnnxNetwork(path, threads)
    except Exception as err:  # onnxruntime raises its own classes (InvalidProtobuf, Fail) for a damaged file
        warnings.warn(f"{path}: the cached ONNX graph could not be loaded ({_first_line(err)}); rebuilding it",
                      GraphCacheWarning, stacklevel=2)
    path.unlink(missing_ok=True)
    path = cached_onnx(model, sample_shape, digest, cache)
    try:
        return OnnxNetwork(path, threads)
    except Exception as err:
        raise MedSegIOError(path, f"the ONNX graph rebuilt in the cache cannot be loaded either ({_first_line(err)}); "
                                  "use --runtime torch, or free the disk and try again") from None
