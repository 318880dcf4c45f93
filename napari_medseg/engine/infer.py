"""Inference: 2D images, 3D volumes slice by slice (2.5D stacks for LSTMSA), sliding windows with
Gaussian blending, test-time flips, largest-component clean-up, and disc labeling from heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..io.errors import InvalidInput
from .. import io
from . import tasks
from . import checkpoint as ckpt
from . import preprocess as pp
from .devices import release_memory, select_device, select_precision
from .discs import DECODING, anchor_numbering, decode_discs, flag_discs
from .events import CancelToken, Progress


class Predictor:
    """A trained network plus the preprocessing it was trained with."""

    def __init__(self, model, config: dict, device: str = "auto", precision: str = "auto",
                 batch_size: int | str = "auto", runtime: str = "auto"):
        """``model``: the network (``torch.nn.Module``) or a function that builds it with its weights; with
        the onnxruntime runtime it is built only when needed (export, memory measurement), so a cached graph
        starts without building it. ``batch_size``: slices (or images, windows) per forward pass; ``"auto"``
        fits the batch to the device's free memory (:mod:`.memory`), and a batch that runs out of memory is
        halved and retried. ``runtime``: ``"torch"`` (eager), ``"onnxruntime"`` (the network exported to
        ONNX, CPU, fp32) or ``"auto"``, the network's measured choice (:mod:`.runtime`)."""
        if not (batch_size == "auto" or (isinstance(batch_size, int) and batch_size >= 1)):
            raise InvalidInput(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        self.device = select_device(device)
        from .runtime import choose_runtime

        # the runtime first: onnxruntime (the measured choice on CPUs) computes in fp32 whatever "auto" would pick
        self.runtime = choose_runtime(runtime, config["model"]["name"], self.device, precision)
        self.precision = select_precision(self.device, "fp32" if self.runtime == "onnxruntime" else precision)
        self._model, self._build = (model, None) if isinstance(model, torch.nn.Module) else (None, model)
        if self.runtime == "torch" or self._model is not None:
            self.model = self.model  # eager: built now, on the device, in eval mode
        self.config = config
        self.pre = config.get("preprocessing", {})
        self.channels = int(config["model"]["in_channels"])
        self.prep = pp.Preprocessing.from_config(self.pre, channels=self.channels)  # the training's own rules
        self.size = tuple(self.prep.input_size)
        self.num_classes = int(config["model"]["num_classes"])
        self.task = config["model"].get("task", "segmentation")
        self.batch_size = batch_size
        self._auto_batch: dict[tuple, int] = {}  # input shape -> batch chosen for it
        self.last_batch_size: int | None = None  # the batch the last prediction ran with
        self._graphs: dict[tuple, object] = {}  # input shape -> onnxruntime network

    @property
    def model(self) -> torch.nn.Module:
        """The torch network (built on first use when the onnxruntime runtime did not need it)."""
        if self._model is None:
            self.model = self._build()
        return self._model

    @model.setter
    def model(self, net: torch.nn.Module) -> None:
        self._model = net.to(self.device).eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kw) -> "Predictor":
        """A Predictor for a checkpoint folder. With the onnxruntime runtime its graph for the model's input
        shape is opened here: from the cache without building the torch network (start-up without the
        MONAI import), else the network is built, its weights loaded and exported, so a checkpoint that
        does not fit fails at load either way."""
        pred = cls(lambda: ckpt.load_model(path)[0], ckpt.read_config(path), **kw)
        pred.source = Path(path)
        if pred.runtime == "onnxruntime":
            pred._graph(pred.sample_shape())
        return pred

    source: Path | None = None  # the checkpoint folder, when loaded from one
    _identity: dict | None = None

    def class_names(self) -> list[str]:
        """A name per output class: the training data's (``label_names``), else ``background``, ``class 1`` ..."""
        return io.class_names(self.pre.get("label_names") or ["background"], self.num_classes)

    def identity(self) -> dict:
        """Who made a result, for DICOM outputs: the model's name (the bundled weights' or the network's),
        the package version and the SHA-256 of the weights file (read once per Predictor: a batch asks for
        every input)."""
        from .. import __version__
        from .runtime import weights_digest

        if self._identity is None:
            digest = None
            if self.source is not None and (self.source / "model.safetensors").is_file():
                digest = weights_digest(self.source / "model.safetensors")
            name = (self.config.get("card") or {}).get("name") or self.config["model"]["name"]
            self._identity = {"name": name, "version": __version__, "weights_sha256": digest}
        return dict(self._identity)

    @property
    def expects(self) -> dict:
        """What the model was trained on (engine.expectations), ``{}`` for checkpoints that record nothing."""
        return self.config.get("expects") or {}

    def check_input(self, vol: io.Volume, force: bool = False) -> list[str]:
        """Refuse (:class:`~.expectations.InputMismatch`) an input unlike the training data, unless ``force``;
        returns the reasons (empty when it fits, or the overridden reasons when forced)."""
        from .expectations import check, input_profile, refusal

        reasons = check(input_profile(vol), self.expects)
        if reasons and not force:
            raise refusal(vol.name, reasons)
        return reasons

    def require_segmentation(self):
        tasks.of(self.task).require(tasks.SEGMENTATION, self.config["model"]["name"])

    # ------------------------------------------------------------ core

    @torch.no_grad()
    def _forward(self, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Softmax probabilities (B, K, H, W); ``tta`` averages over horizontal and vertical flips."""
        flips = [(), (-1,), (-2,)] if tta else [()]
        acc = None
        for dims in flips:
            xi = x.flip(dims) if dims else x
            if self.runtime == "onnxruntime":
                out = self._graph(tuple(xi.shape[1:]))(xi)
            else:
                with self.precision.autocast():
                    out = self.model(xi.to(self.device))
            prob = tasks.of(self.task).activate(out)
            prob = prob.flip(dims) if dims else prob
            acc = prob if acc is None else acc + prob
        return (acc / len(flips)).cpu()

    def sample_shape(self) -> tuple[int, ...]:
        """One network input without the batch axis: (C, h, w), or (2 * context + 1, C, h, w) for 2.5D."""
        shape = (self.channels, *self.size)
        return (2 * self.prep.context + 1, *shape) if self.prep.context else shape

    def _graph(self, shape: tuple[int, ...]):
        """The onnxruntime network for inputs of ``shape`` (C, H, W): exported once per weights and shape
        into the cache (:func:`.runtime.open_cached_graph`)."""
        if shape not in self._graphs:
            from .runtime import open_cached_graph

            # the weights' SHA-256, hashed once per Predictor (identity() also names DICOM outputs with it); a
            # damaged cached graph is rebuilt once
            self._graphs[shape] = open_cached_graph(lambda: self.model, shape, self.identity()["weights_sha256"])
        return self._graphs[shape]

    def batch_for(self, shape: tuple[int, ...]) -> int:
        """Samples of ``shape`` (C, H, W) per forward pass: the fixed ``batch_size``, or under ``"auto"``
        the largest batch that fits the memory budget (measured once per shape, :mod:`.memory`; from the
        graph under the onnxruntime runtime)."""
        if self.batch_size != "auto":
            return int(self.batch_size)
        shape = tuple(int(v) for v in shape)
        if shape not in self._auto_batch:
            from . import memory

            if self.runtime == "onnxruntime":  # read from the graph: the torch network is not built for it
                cost = memory.graph_sample_bytes(self._graph(shape).path)
            else:
                cost = memory.per_sample_bytes(self.model, torch.zeros(shape), self.device, self.precision.autocast)
            self._auto_batch[shape] = memory.batch_for_budget(cost, memory.available_bytes(self.device),
                                                              self.device.type)
        return self._auto_batch[shape]

    def _batched(self, samples: list[np.ndarray], tta: bool, cancel: CancelToken | None = None, progress=None):
        outs, i = [], 0
        # one sample (a 2D image, a disc view) needs no measurement
        batch = 1 if len(samples) == 1 else min(len(samples), self.batch_for(np.shape(samples[0])))
        while i < len(samples):
            if cancel is not None and cancel.cancelled:
                raise InterruptedError("prediction cancelled")
            x = torch.as_tensor(np.stack(samples[i: i + batch]), dtype=torch.float32)
            try:
                outs.append(self._forward(x, tta))
            except (RuntimeError, MemoryError) as err:
                if not _out_of_memory(err):
                    raise
                if batch == 1:
                    raise MemoryError(f"out of memory predicting one sample at {tuple(x.shape[-2:])}: "
                                      "use a smaller tile size or another device") from err
                batch = max(1, batch // 2)  # halve and retry this chunk; later chunks keep the smaller batch
                release_memory()
                continue
            i += x.shape[0]
            if progress:
                progress(i, len(samples))
        self.last_batch_size = batch
        return torch.cat(outs)

    # ------------------------------------------------------------ 2D

    def segment(self, vol: io.Volume, *, axis: int | str | None = None, tta: bool = False, cleanup: bool = False,
                probabilities: bool = False, callback=None, cancel: CancelToken | None = None,
                only_slices: list[int] | None = None):
        """The one segmentation path of api, batch runs, Dask workers and the widgets: a 2-D image, a stack of
        2-D images (RGB or grey: image by image, labels (N, H, W)), a 3-D volume slice by slice or a 4-D
        series frame by frame (:meth:`segment_volume`, file order). Labels, or (labels, probabilities) with
        ``probabilities`` (a stack's: (K, N, H, W)). ``axis``, ``callback``, ``cancel`` and ``only_slices``
        apply to volumes."""
        self.require_segmentation()
        if not vol.is_2d:
            return self.segment_volume(vol, axis=axis, tta=tta, cleanup=cleanup, probabilities=probabilities,
                                       callback=callback, cancel=cancel, only_slices=only_slices)
        data = np.asarray(vol.data)
        single = data.ndim - int(vol.rgb) == 2
        outs = [self.segment_image(f, rgb=vol.rgb, tta=tta, cleanup=cleanup, probabilities=probabilities)
                for f in ([data] if single else data)]
        if not probabilities:
            return outs[0] if single else np.stack(outs)
        labels, probs = [o[0] for o in outs], [o[1] for o in outs]
        return (labels[0], probs[0]) if single else (np.stack(labels), np.stack(probs, 1))

    def segment_image(self, image: np.ndarray, *, rgb: bool | None = None, tta: bool = False,
                      cleanup: bool = False, probabilities: bool = False, mode: str = "resize"):
        """Labels (H, W) uint8 for one 2D image (and probabilities (K, H, W) on request).

        ``mode="resize"`` resizes to the training size and back (how the 2D networks were trained);
        ``mode="sliding"`` runs Gaussian-blended sliding windows of the training size at native resolution
        (for images much larger than the training size, when training used native-resolution crops)."""
        self.require_segmentation()
        image = np.asarray(image)
        rgb = (image.ndim == 3 and image.shape[-1] in (3, 4)) if rgb is None else rgb
        h, w = image.shape[:2]
        if mode == "sliding":
            from monai.inferers import sliding_window_inference

            t = torch.as_tensor(self.prep.image2d_full(image, rgb))[None]
            with torch.no_grad():
                prob = sliding_window_inference(t, self.size, sw_batch_size=self.batch_for((t.shape[1], *self.size)),
                                                predictor=lambda b: self._forward(b, tta), overlap=0.25,
                                                mode="gaussian", padding_mode="reflect")[0]
        else:
            prob = self._batched([self.prep.image2d(image, rgb)], tta)[0]
            prob = pp.resize(prob, (h, w), "bilinear")
        labels = class_argmax(prob)
        if cleanup:
            labels = largest_components(labels)
        return (labels, prob.numpy()) if probabilities else labels

    # ------------------------------------------------------------ 3D

    def segment_volume(self, vol: io.Volume, *, axis: int | str | None = None, tta: bool = False,
                       cleanup: bool = False, probabilities: bool = False, callback=None,
                       cancel: CancelToken | None = None, only_slices: list[int] | None = None):
        """Labels with the volume's spatial shape (file order), predicted slice by slice along ``axis``
        (default: the one recorded at training, else the through-plane axis). A 4-D volume (x, y, z, t) is
        segmented frame by frame into (x, y, z, t) labels. ``only_slices`` predicts just those slices
        (the rest stay 0), through exactly the same steps as a full run."""
        self.require_segmentation()
        data = np.asarray(vol.data)
        if data.ndim == 4:
            frames = [self.segment_volume(io.Volume(data[..., t], vol.affine, name=f"{vol.name}[t={t}]"), axis=axis,
                                          tta=tta, cleanup=cleanup, probabilities=probabilities, callback=callback,
                                          cancel=cancel, only_slices=only_slices) for t in range(data.shape[3])]
            if probabilities:
                return np.stack([f[0] for f in frames], -1), np.stack([f[1] for f in frames], -1)
            return np.stack(frames, -1)
        if data.ndim != 3:
            raise InvalidInput(f"{vol.name}: expected a 3-D volume, got shape {data.shape}")
        ax, slices = self.prep.volume_slices(data, vol.affine, axis)
        n, h, w = slices.shape
        todo = list(range(n)) if only_slices is None else sorted({int(k) for k in only_slices})
        if any(not 0 <= k < n for k in todo):
            raise InvalidInput(f"{vol.name}: slice index out of range 0..{n - 1} along axis {ax}: {todo}")
        samples = self.prep.volume_samples(slices, todo)
        emit = callback or (lambda e: None)
        out = self._batched(samples, tta, cancel,
                            progress=lambda d, t: emit(Progress(done=d, total=t, item=vol.name, status="slices")))
        # slice by slice: labels need no (n, K, h, w) volume of probabilities unless asked for
        labels = np.zeros((n, h, w), np.uint8)  # slices not predicted (only_slices) are background
        probs = torch.zeros((n, out.shape[1], h, w)) if probabilities else None
        if probs is not None and only_slices is not None:
            probs[:, 0] = 1.0
        for k, p in zip(todo, out):
            full = pp.resize(p, (h, w))
            labels[k] = class_argmax(full)
            if probs is not None:
                probs[k] = full
        labels = np.moveaxis(labels, 0, ax)
        if cleanup:
            labels = largest_components(labels)
        if probabilities:
            return labels, np.moveaxis(probs.numpy(), 0, ax + 1 if ax else 1)
        return labels

    # ------------------------------------------------------------ discs

    def disc_heatmaps(self, vol: io.Volume) -> tuple[np.ndarray, np.ndarray, dict]:
        """The network's disc heatmaps (K, h, w) for ``vol``, with the sagittal view and its geometry."""
        tasks.of(self.task).require(tasks.KEYPOINTS, self.config["model"]["name"])
        data = np.asarray(vol.data, dtype=np.float32)
        if data.ndim != 3:
            raise InvalidInput(f"{vol.name}: disc labeling needs a 3-D volume, got shape {data.shape}")
        from .data import disc_view_input

        view, geo = pp.sagittal_view(data, vol.affine, int(self.pre.get("n_average", 7)))
        heat = self._batched([disc_view_input(view, self.size)], tta=False)[0].numpy()
        return heat, view, geo

    def decoding(self) -> dict:
        """The decoding settings: ``engine.discs.DECODING``, overridden by those chosen on the validation split
        and recorded in the checkpoint (``preprocessing.decoding``)."""
        return {**DECODING, **(self.pre.get("decoding") or {})}

    def label_discs(self, vol: io.Volume, *, min_confidence: float | None = None) -> io.DiscPoints:
        """Named discs (SCT numbers) with confidences and flags, in voxel and world coordinates of ``vol``."""
        heat, view, geo = self.disc_heatmaps(vol)
        from .data import disc_view_scale

        scale = disc_view_scale(view.shape, self.size)
        h, w = (int(np.ceil(n * s)) for n, s in zip(view.shape, scale))
        heat = heat.copy()
        heat[:, h:], heat[:, :, w:] = 0.0, 0.0  # nothing in the padding that squares a view (outside the scan)
        dec = self.decoding()
        if min_confidence is not None:
            dec["min_confidence"] = min_confidence
        numbers = list(self.pre["disc_numbers"])
        found = decode_discs(heat, numbers, self.pre.get("prior", {}), min_confidence=dec["min_confidence"],
                             prior_weight=dec["prior_weight"])
        found, numbering, count = anchor_numbering(
            found, heat, numbers, dec["anchor_confidence"], second_ratio=dec.get("second_ratio"),
            levels=tuple(dec.get("anchor_levels") or (25,)), rows_in_scan=h, below_floor=dec.get("below_floor"),
            agree_min=dec.get("agree_min"), edge_room=dec.get("edge_room"),
            sure_anchor=dec.get("sure_anchor"), respond_floor=dec["min_confidence"],
            renamed_doubt=bool(dec.get("renamed_doubt", True)))
        if not found:
            return io.DiscPoints([], vol.affine, vol.data.shape[:3], vol.path)
        rows = np.array([f["row"] for f in found])
        cols = np.array([f["col"] for f in found])
        # network-input pixels -> sagittal-view pixels (the inverse of data.disc_view_scale's mapping)
        sr, sc = 1.0 / scale
        vox = pp.view_to_voxel((rows + 0.5) * sr - 0.5, (cols + 0.5) * sc - 0.5, geo)
        lr = self.disc_depth(vol, rows, cols, [numbers.index(f["number"]) for f in found]) \
            if dec.get("use_depth", True) else None
        if lr is not None:
            vox[:, geo["lr"]] = np.where(np.isfinite(lr), lr, vox[:, geo["lr"]])
        points = io.DiscPoints.from_voxels(vox, [f["number"] for f in found], vol.affine, vol.data.shape[:3],
                                           confidences=[f["confidence"] for f in found], source=vol.path)
        points.count = count
        return flag_discs(points, numbering, low_confidence=dec.get("low_confidence"))  # no output without flags

    def disc_depth(self, vol: io.Volume, rows, cols, channels) -> np.ndarray | None:
        """Left-right voxel position of discs found at network-input (``rows``, ``cols``) in heatmap
        ``channels``, from the model's depth channels (engine/disc_targets.py) read on thin sagittal views
        swept across the slices: the view where each disc's depth channel peaks, refined between its
        neighbours by a parabola. NaN for a disc whose depth response stays below ``DEPTH_MIN`` (it keeps the
        middle of the view); None for a model without depth channels."""
        if not self.pre.get("depth"):
            return None
        from . import disc_targets as DT
        from .data import disc_view_input

        data = np.asarray(vol.data, dtype=np.float32)
        lr_axis = pp.sagittal_axes(vol.affine)[0]
        offsets = DT.sweep_offsets(data.shape[lr_axis], float(np.linalg.norm(np.asarray(vol.affine)[:3, lr_axis])))
        views, centres = [], []
        for o in offsets:
            v, g = pp.sagittal_view(data, vol.affine, DT.SWEEP_SLICES, o)
            views.append(disc_view_input(v, self.size))
            centres.append(g["mid"])
        k = len(self.pre["disc_numbers"])
        heat = self._batched(views, tta=False).float().numpy()[:, k:]  # (V, K, h, w): the depth channels
        return DT.depth_peaks(heat, np.asarray(centres, float), rows, cols, channels)


def class_argmax(prob: torch.Tensor) -> np.ndarray:
    """``prob.argmax(0)`` as uint8 labels for class scores (K, H, W), the first class winning ties, as
    argmax does; one comparison for two classes, else a running maximum over the K contiguous planes (2.4x
    faster than argmax over the strided class axis for 100 slices of 4 x 512 x 512; a profile found that
    argmax taking as long as the U-Net itself on a 512x512 CT, docs/benchmarks.md)."""
    if prob.shape[0] == 1:
        return np.zeros(prob.shape[1:], dtype=np.uint8)
    labels = (prob[1] > prob[0]).to(torch.uint8)  # strict: a tie stays with the first class
    if prob.shape[0] > 2:
        best = torch.maximum(prob[0], prob[1])
        for c in range(2, prob.shape[0]):
            labels.masked_fill_(prob[c] > best, c)
            if c < prob.shape[0] - 1:
                torch.maximum(best, prob[c], out=best)
    return labels.numpy()


def _out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError) or isinstance(err, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(err).lower()
    return "out of memory" in text or "can't allocate" in text or "cannot allocate" in text


def largest_components(labels: np.ndarray) -> np.ndarray:
    """Keep only the largest connected component of each foreground class."""
    from scipy import ndimage

    out = np.zeros_like(labels)
    for c in np.unique(labels):
        if c == 0:
            continue
        comp, n = ndimage.label(labels == c)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        out[comp == (np.argmax(sizes) + 1)] = c
    return out

