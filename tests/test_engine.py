"""Engine: short real training runs on tiny subsets of ../shared/data, checkpoints, resume, cancel,
inference, evaluation, bad input."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medseg import api, io
from napari_medseg.engine import checkpoint as ckpt
from napari_medseg.engine import data as D
from napari_medseg.engine.devices import Precision, select_device, select_precision
from napari_medseg.engine.events import CancelToken
from napari_medseg.engine.train import train

from .conftest import SHARED, _subset, train_opts
from .conftest import train_opts as _opts

torch.set_num_threads(2)


@pytest.mark.parametrize("model,dataset", [
    ("unet", "kvasir-seg"), ("bilateral", "kvasir-seg"), ("bcdunet", "kvasir-seg"),
    ("lstmsa", "acdc"), ("hourglass", "spine-discs"),
])
def test_train_predict_evaluate(tiny, tmp_path, model, dataset):
    events = []
    result = train(_opts(model, tiny[dataset], tmp_path / "run", epochs=2), callback=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished" and kinds.count("epoch") == 2 and "step" in kinds
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    cfg = ckpt.read_config(tmp_path / "run" / "best")
    assert cfg["model"]["name"] == model and cfg["software"]["torch"] == torch.__version__
    assert cfg["data"]["train_cases"] >= 3
    res = api.evaluate(str(tiny[dataset]), weights=result["best_checkpoint"], device="cpu")
    assert len(res["cases"]) >= 1
    keys = {"l2_mm", "fnr", "fpr"} if model == "hourglass" else {"dice", "iou", "hd95"}
    assert keys <= set(res["mean"])
    if model != "hourglass":
        assert 0.0 <= res["mean"]["dice"] <= 1.0


def test_lstmsa_trains_on_25d_stacks(tiny, tmp_path):
    train(_opts("lstmsa", tiny["acdc"], tmp_path / "run"))
    cfg = ckpt.read_config(tmp_path / "run" / "best")
    assert cfg["preprocessing"]["context"] == 1 and cfg["model"]["num_classes"] == 4
    assert cfg["preprocessing"]["label_names"] == ["background", "RV", "Myo", "LV"]


def _weights(path):
    return ckpt.load_weights(path)


def test_extra_training_folder_joins_train_only(tiny, tmp_path):
    """PH2 + ISIC crops style: a second folder's train split is added; validation stays the first's; a folder
    of another kind is refused before training."""
    from napari_medseg.engine.train import prepare_data

    other = _subset(tmp_path, "isic2016-crops", *_first("isic2016-crops", 3, 1, 1))
    opts = train_opts("unet", tiny["kvasir-seg"], tmp_path / "run", extra_train=[str(other)])
    train_set, val_set, summary = prepare_data(opts, (64, 64))
    assert summary["extra_train_cases"] == 3 and len(train_set.images) == 4 + 3 and len(val_set.images) == 2
    assert sum(s.startswith("isic2016-crops/") for s in train_set.stems) == 3
    result = train(opts)
    assert result["reason"] == "done" and Path(result["best_checkpoint"]).is_dir()
    with pytest.raises(ValueError, match="extra training data"):
        prepare_data(train_opts("unet", tiny["kvasir-seg"], tmp_path / "r2", extra_train=[str(tiny["acdc"])]),
                     (64, 64))


def _first(name, n_train, n_val, n_test):
    import json

    parts = json.loads((SHARED / name / "split.json").read_text())
    return parts["train"][:n_train], parts["val"][:n_val], parts["test"][:n_test]


def test_resume_equals_uninterrupted(tiny, tmp_path):
    full = train(_opts("unet", tiny["kvasir-seg"], tmp_path / "full", epochs=3))
    cancel = CancelToken()  # interrupt after epoch 2 of 3 (same schedule as the full run), then resume

    def stop_after_two(e):
        if e.kind == "epoch" and e.epoch == 2:
            cancel.cancel()

    first = train(_opts("unet", tiny["kvasir-seg"], tmp_path / "part", epochs=3), callback=stop_after_two,
                  cancel=cancel)
    assert first["reason"] == "cancelled" and first["epochs_done"] == 2
    second = train(_opts("unet", tiny["kvasir-seg"], tmp_path / "part", epochs=3, resume=True))
    assert second["epochs_done"] == 3
    a, b = _weights(tmp_path / "full" / "last"), _weights(tmp_path / "part" / "last")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert [round(h["train_loss"], 6) for h in full["history"]] == [round(h["train_loss"], 6) for h in second["history"]]


def test_cancel_mid_epoch_leaves_resumable_checkpoint(tiny, tmp_path):
    cancel = CancelToken()

    def on_event(e):
        if e.kind == "step" and e.step == 1:
            cancel.cancel()

    res = train(_opts("unet", tiny["kvasir-seg"], tmp_path / "run", epochs=2, max_steps_per_epoch=3),
                callback=on_event, cancel=cancel)
    assert res["reason"] == "cancelled" and res["epochs_done"] == 0
    state = ckpt.load_train_state(tmp_path / "run" / "last")
    assert state["epoch"] == 0 and "optimizer" in state
    res2 = train(_opts("unet", tiny["kvasir-seg"], tmp_path / "run", epochs=2, resume=True))
    assert res2["epochs_done"] == 2 and res2["reason"] == "done"


def test_early_stopping(tiny, tmp_path):
    res = train(_opts("unet", tiny["kvasir-seg"], tmp_path / "run", epochs=6, patience=1, lr=1e-12))
    assert res["reason"] == "early_stop" and res["epochs_done"] < 6


def test_sigkill_then_resume(tiny, tmp_path):
    """A training process killed with SIGKILL leaves a loadable checkpoint; --resume carries on."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "napari_medseg.cli", "train", "--model", "unet", "--data", str(tiny["kvasir-seg"]),
           "--out", str(out), "--epochs", "30", "--batch-size", "2", "--input-size", "64", "--precision", "fp32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # wait for the first resumable checkpoint (best/ is written before last/, so history.json alone is not
    # enough), then kill somewhere in the following epoch (possibly mid-save)
    while time.time() < deadline and not (out / "last").is_dir():
        time.sleep(0.2)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "last").is_dir(), "no checkpoint was written before the kill"
    model, cfg = ckpt.load_model(out / "last")  # not corrupt
    done = ckpt.load_train_state(out / "last")["epoch"]
    assert done >= 1
    res = train(_opts("unet", tiny["kvasir-seg"], out, epochs=done + 1, resume=True, max_steps_per_epoch=None))
    assert res["epochs_done"] == done + 1


def test_ddp_is_data_parallel_sgd(tiny, tmp_path):
    """torchrun with 2 gloo processes, batch 1 each, against one process with batch 2 (no augmentation, no
    dropout, InstanceNorm U-Net, fp32): after every step both ranks hold identical weights, the ranks saw
    disjoint samples covering the epoch, and the final weights equal the single-process run's."""
    def run(out, extra, env_extra):
        env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
        cmd = ["-m", "napari_medseg.cli", "train", "--model", "unet", "--data", str(tiny["kvasir-seg"]),
               "--out", str(out), "--epochs", "2", "--input-size", "64", "--precision", "fp32", "--seed", "1",
               "--no-augment", "--lr", "1e-3", *extra]
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env, timeout=300) \
            if "--batch-size" in extra and extra[extra.index("--batch-size") + 1] == "2" else \
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                            "29533", *cmd], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]

    log = tmp_path / "ranks"
    run(tmp_path / "ddp", ["--batch-size", "1"], {"NAPARI_MEDSEG_RANK_LOG": str(log)})
    run(tmp_path / "single", ["--batch-size", "2"], {})
    assert ckpt.read_config(tmp_path / "ddp" / "last")["training"]["world_size"] == 2
    r0 = [json.loads(line) for line in open(f"{log}.rank0")]
    r1 = [json.loads(line) for line in open(f"{log}.rank1")]
    assert len(r0) == len(r1) >= 4
    n = len(D.split(D.discover(tiny["kvasir-seg"]))["train"])
    for a, b in zip(r0, r1):
        assert a["weights"] == b["weights"], "the ranks' weights differ after a step"
        assert not set(a["ids"]) & set(b["ids"]), "both ranks got the same sample"
    for epoch in (0, 1):
        seen = [i for r in (r0, r1) for s in r if s["epoch"] == epoch for i in s["ids"]]
        assert sorted(seen) == list(range(n))  # each rank its own shard, together the whole epoch
    ddp, single = ckpt.load_weights(tmp_path / "ddp" / "last"), ckpt.load_weights(tmp_path / "single" / "last")
    assert ddp.keys() == single.keys()
    # Adam divides each gradient by its own magnitude, so an element whose gradient is rounding noise (a
    # convolution bias followed by InstanceNorm has a true gradient of exactly 0, a few weights nearly so)
    # takes +-lr steps that differ from run to run. Data-parallel SGD done right leaves those few; no
    # gradient sync or both ranks on one shard moves most elements by ~lr.
    moved = total = 0
    for k in ddp:
        if ".conv.bias" in k or not ddp[k].is_floating_point():
            continue
        far = (ddp[k] - single[k]).abs() > 1e-4 + 1e-3 * single[k].abs()
        moved, total = moved + int(far.sum()), total + far.numel()
        assert float((ddp[k] - single[k]).abs().max()) < 5e-3, k
    assert moved / total < 0.005, f"{moved} of {total} weights differ between 2x1 and 1x2"
    (m1, _), (m2, _) = ckpt.load_model(tmp_path / "ddp" / "last"), ckpt.load_model(tmp_path / "single" / "last")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m1.eval()(x), m2.eval()(x), rtol=1e-2, atol=1e-3)


def test_pickle_checkpoint_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ckpt.CheckpointError, match="refusing to load a pickle-based PyTorch file"):
        ckpt.load_model(bad)
    with pytest.raises(ckpt.CheckpointError, match="refusing to load a pickle"):
        api.load(weights=bad)
    assert not marker.exists()


def test_checkpoint_for_another_model_or_class_count(tiny, tmp_path):
    train(_opts("unet", tiny["kvasir-seg"], tmp_path / "run"))
    with pytest.raises(ckpt.CheckpointError, match="holds network 'unet', not 'bcdunet'"):
        ckpt.load_model(tmp_path / "run" / "best", expect_model="bcdunet")
    with pytest.raises(ckpt.CheckpointError, match="predicts 2 classes, not 4"):
        ckpt.load_model(tmp_path / "run" / "best", expect_classes=4)
    with pytest.raises(ckpt.CheckpointError, match="cannot resume: it trains unet"):
        train(_opts("bcdunet", tiny["kvasir-seg"], tmp_path / "run", resume=True))


def test_unwritable_output_fails_before_training(tiny, tmp_path):
    (tmp_path / "afile").write_text("x")
    events = []
    with pytest.raises(ckpt.CheckpointError, match="cannot write the run folder"):
        train(_opts("unet", tiny["kvasir-seg"], tmp_path / "afile" / "run"), callback=events.append)
    assert not any(e.kind == "step" for e in events)


def test_unwritable_output_directory_is_refused_before_training(tiny, tmp_path):
    """A run folder that cannot be written is refused before the first step, with a message naming it.
    Two ways that work for any user: a folder on a filesystem where nothing can be created (/proc, even for
    root), and a folder without write permission (for a user the permission binds, i.e. not root)."""
    import re

    places = [Path("/proc/self/medseg-run")]
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if not os.access(ro, os.W_OK):  # root ignores directory permissions: the /proc case still runs
        places.append(ro / "run")
    try:
        for out in places:
            events = []
            with pytest.raises(ckpt.CheckpointError, match=re.escape(str(out)) + ": cannot write the run folder"):
                train(_opts("unet", tiny["kvasir-seg"], out), callback=events.append)
            assert not any(e.kind == "step" for e in events)
    finally:
        ro.chmod(0o700)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    ckpt.save_checkpoint(tmp_path / "c", model, {"model": {"name": "x"}})
    before = (tmp_path / "c" / "model.safetensors").read_bytes()

    from napari_medseg.io.errors import NoSpaceLeft

    for code, error, said in ((28, NoSpaceLeft, "no space left on the device.*--resume"),
                              (5, ckpt.CheckpointError, "Input/output error")):
        def boom(*a, **k):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(ckpt, "_write_tensors", boom)
        with pytest.raises(error, match=said):
            ckpt.save_checkpoint(tmp_path / "c", model, {"model": {"name": "x"}})
        assert (tmp_path / "c" / "model.safetensors").read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


# ---------------------------------------------------------------- bad datasets


def _seg2d(tmp_path, shared, n=3):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    imgs = sorted((shared / "ph2" / "images").glob("*.jpg"))[:n]
    for p in imgs:
        shutil.copy(p, root / "images" / p.name)
        shutil.copy(shared / "ph2" / "masks" / (p.stem + ".png"), root / "masks" / (p.stem + ".png"))
    return root, [p.stem for p in imgs]


def test_missing_partner(tmp_path, shared):
    root, stems = _seg2d(tmp_path, shared)
    (root / "masks" / f"{stems[0]}.png").unlink()
    with pytest.raises(D.DataError, match=r"unpaired files: 1 image\(s\) without a label"):
        D.discover(root)


def test_size_mismatch(tmp_path, shared):
    from PIL import Image

    root, stems = _seg2d(tmp_path, shared)
    Image.new("L", (10, 12)).save(root / "masks" / f"{stems[1]}.png")
    with pytest.raises(D.DataError, match=rf"{stems[1]}.png: mask is 10x12 but its image is"):
        D.prepare(D.discover(root), stems, size=(64, 64), channels=3)


def test_unexpected_mask_values(tmp_path, shared):
    from PIL import Image

    root, stems = _seg2d(tmp_path, shared)
    arr = np.asarray(Image.open(root / "masks" / f"{stems[0]}.png")).copy()
    arr[:5, :5] = 128
    Image.fromarray(arr).save(root / "masks" / f"{stems[0]}.png")
    with pytest.raises(D.DataError, match="unexpected mask values"):
        D.prepare(D.discover(root), stems, size=(64, 64), channels=3)


def test_empty_dataset_and_bad_split(tmp_path, shared):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(D.DataError, match="has no images"):
        D.discover(tmp_path / "empty")
    root, stems = _seg2d(tmp_path, shared)
    (root / "split.json").write_text(json.dumps({"train": stems[:2] + ["ghost"], "val": stems[2:]}))
    with pytest.raises(D.DataError, match=r"1 stem\(s\) in the split have no files \(e.g. ghost\)"):
        D.split(D.discover(root))


def test_unknown_layout(tmp_path):
    with pytest.raises(D.DataError, match="unknown dataset layout"):
        D.discover(tmp_path)


# ---------------------------------------------------------------- inference


def test_segment_volume_keeps_geometry_and_cli_predict(trained, shared, tmp_path):
    src = shared / "volumes" / "ct-spleen-crop.nii.gz"
    from napari_medseg.cli import main

    # --force: the tiny test model was trained on cardiac MRI; this checks geometry, not accuracy
    assert main(["predict", "--weights", trained["vol"], str(src), "--out", str(tmp_path), "--force"]) == 0
    import nibabel as nib

    seg, ref = nib.load(tmp_path / "ct-spleen-crop_seg.nii.gz"), nib.load(src)
    assert seg.shape == ref.shape and np.array_equal(seg.affine, ref.affine)


def test_segment_image_resize_and_sliding(trained, shared):
    pred = api.load(weights=trained["seg"], device="cpu")
    img = io.read_image2d(sorted((shared / "kvasir-seg" / "images").glob("*.jpg"))[0])
    a = pred.segment_image(img.data, tta=True, cleanup=True)
    b = pred.segment_image(img.data, mode="sliding")
    assert a.shape == b.shape == img.data.shape[:2]
    labels, probs = pred.segment_image(img.data, probabilities=True)
    assert probs.shape == (2, *img.data.shape[:2]) and np.allclose(probs.sum(0), 1, atol=1e-4)


def test_out_of_memory_message(trained, monkeypatch):
    pred = api.load(weights=trained["seg"], device="cpu", runtime="torch")  # the eager network, patched below

    def oom(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes")

    monkeypatch.setattr(pred.model, "forward", oom)
    with pytest.raises(MemoryError, match="out of memory predicting one sample at .*smaller tile size"):
        pred.segment_image(np.zeros((64, 64, 3), np.uint8))


def _acdc_volume(shared):
    from napari_medseg.engine import data as D

    layout = D.discover(shared / "acdc")
    return io.read_nifti(layout.pairs[D.split(layout)["test"][0]][0])


def test_slice_batches_give_the_same_labels_and_fit_the_memory_budget(trained, shared, monkeypatch):
    from napari_medseg.engine import memory

    vol = _acdc_volume(shared)
    one = api.load(weights=trained["vol"], device="cpu", batch_size=1)
    ref = one.segment_volume(vol, probabilities=True)
    auto = api.load(weights=trained["vol"], device="cpu")  # "auto" is the default
    assert auto.batch_size == "auto"
    got = auto.segment_volume(vol, probabilities=True)
    assert np.array_equal(got[0], ref[0]) and np.allclose(got[1], ref[1], atol=1e-5)
    assert auto.last_batch_size == memory.CAPS["cpu"]  # plenty of memory: the CPU cap
    # a tight budget: the batch shrinks to what fits (measured cost per slice x batch <= half the memory)
    shape = next(iter(auto._auto_batch))
    if auto.runtime == "onnxruntime":  # the cost is read from the graph (tests/test_startup.py: no torch network)
        cost = memory.graph_sample_bytes(auto._graph(shape).path)
    else:
        cost = memory.per_sample_bytes(auto.model, torch.zeros(shape), auto.device, auto.precision.autocast)
    tight = api.load(weights=trained["vol"], device="cpu")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 3 * cost)
    got = tight.segment_volume(vol)
    assert tight.last_batch_size == 1 and np.array_equal(got, ref[0])
    # only some slices: exactly the full run's labels there, background (probability 1) elsewhere
    part, (labels, probs) = [1, 3], auto.segment_volume(vol, probabilities=True, only_slices=[3, 1])
    ax = int(np.argmin(vol.data.shape))  # ACDC: the through-plane axis is the short one
    keep = np.take(labels, part, axis=ax)
    assert np.array_equal(keep, np.take(ref[0], part, axis=ax)) and keep.any()
    others = [k for k in range(vol.data.shape[ax]) if k not in part]
    assert not np.take(labels, others, axis=ax).any()
    assert np.all(np.take(probs[0], others, axis=ax) == 1.0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer or 'auto'"):
        api.load(weights=trained["vol"], device="cpu", batch_size=0)


def test_a_batch_that_runs_out_of_memory_is_halved_and_retried(trained, shared, monkeypatch):
    vol = _acdc_volume(shared)
    ref = api.load(weights=trained["vol"], device="cpu", batch_size=1, runtime="torch").segment_volume(vol)
    pred = api.load(weights=trained["vol"], device="cpu", batch_size=8, runtime="torch")  # the eager net, patched
    forward, sizes = pred.model.forward, []

    def small_memory(x):
        sizes.append(x.shape[0])
        if x.shape[0] > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(x)

    monkeypatch.setattr(pred.model, "forward", small_memory)
    assert np.array_equal(pred.segment_volume(vol), ref)
    assert sizes[:3] == [8, 4, 2] and set(sizes[3:]) <= {2} and pred.last_batch_size == 2
    assert sum(sizes[2:]) == vol.data.shape[2]  # every slice predicted exactly once


def test_memory_budget_rules(tmp_path, monkeypatch):
    from torch import nn

    from napari_medseg.engine import memory

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()).eval()
    # input 1x8x8 + conv 4x8x8 + relu 4x8x8, float32
    nbytes = memory.per_sample_bytes(net, torch.zeros(1, 8, 8), torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    assert nbytes == (64 + 256 + 256) * 4
    # the same rule read from the exported graph (the onnxruntime runtime): the same values, the same bytes
    from napari_medseg.engine.runtime import export_onnx

    path = export_onnx(net, torch.zeros(2, 1, 8, 8), tmp_path / "net.onnx")
    assert memory.graph_sample_bytes(path) == nbytes
    bigger = export_onnx(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval(),
                         torch.zeros(1, 1, 8, 8), tmp_path / "bigger.onnx")
    assert memory.graph_sample_bytes(bigger) == nbytes + 128 * 4

    class PadToQuarter(nn.Module):  # padding computed from the input's shape at run time (as MONAI's U-Net)
        def forward(self, x):
            return torch.nn.functional.pad(x, (0, x.shape[-1] // 4))

    padded = export_onnx(PadToQuarter(), torch.zeros(1, 1, 8, 8), tmp_path / "pad.onnx")
    import onnxruntime as ort

    opened = []

    class Recording(ort.InferenceSession):  # the run that sizes values opens its session as the runtime does
        def __init__(self, model, options=None, **kw):
            opened.append(options)
            super().__init__(model, options, **kw)

    monkeypatch.setattr(ort, "InferenceSession", Recording)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert memory.graph_sample_bytes(padded) == (64 + 8 * 10) * 4  # the 8x10 output sized by running the graph
    assert [(o.intra_op_num_threads, o.inter_op_num_threads) for o in opened] == [(3, 1)]
    assert opened[0].get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert memory.batch_for_budget(100, 1000, "cuda") == 5
    assert memory.batch_for_budget(100, 1000, "cpu") == 2
    assert memory.batch_for_budget(100, 1000, "mps") == 5
    assert memory.batch_for_budget(100, 150, "cuda") == 1  # never below one
    assert memory.batch_for_budget(1, 10**12, "cuda") == 64
    with pytest.raises(ValueError):
        memory.batch_for_budget(0, 1000, "cpu")


def test_label_discs_cli_outputs(trained, shared, tmp_path):
    from napari_medseg.cli import main

    src = shared / "spine-discs" / "images" / "spine_vb2_02.nii.gz"
    assert main(["label-discs", "--weights", trained["hg"], str(src), "--out", str(tmp_path), "--force"]) == 0
    for suffix in ("_discs.csv", "_discs.json", "_labels-disc.nii.gz"):
        assert (tmp_path / f"spine_vb2_02{suffix}").is_file()
    pts = io.read_points(tmp_path / "spine_vb2_02_discs.json")
    ref = io.read_nifti(src)
    # every predicted disc lies inside the volume, on the mid-sagittal slices
    for v in pts.voxels():
        assert all(0 <= c <= s - 1 for c, s in zip(v, ref.data.shape))


def test_batch_skips_bad_file(trained, shared, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for p in sorted((shared / "kvasir-seg" / "images").glob("*.jpg"))[:2]:
        shutil.copy(p, inp / p.name)
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    summary = api.batch(inp, tmp_path / "out", weights=trained["seg"], device="cpu")
    assert len(summary["results"]) == 2 and len(summary["skipped"]) == 1
    assert "broken.png: not a readable image" in summary["skipped"][0]["error"]
    assert all(Path(p).is_file() for p in summary["written"])
    assert all(Path(p).name.endswith("_seg.png") for p in summary["written"])


def test_api_accepts_layer_like_objects(trained):
    class Layer:  # what a napari Image layer offers
        data = np.random.default_rng(0).normal(size=(6, 40, 48)).astype(np.float32)
        scale = (3.0, 1.0, 1.0)
        name = "vol"
        rgb = False

    seg = api.segment(Layer(), weights=trained["vol"], device="cpu", force=True)
    assert seg.labels.shape == Layer.data.shape and seg.affine is None


# ---------------------------------------------------------------- CLI and devices


def test_cli_models_json(capsys):
    from napari_medseg.cli import main

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"lstmsa", "bilateral", "bcdunet", "hourglass", "unet"}
    assert all({"name", "network", "size", "task", "dataset", "weights", "metrics"} <= set(r) for r in rows)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from napari_medseg.cli import main

    (tmp_path / "x.nii.gz").write_bytes(b"")  # an input that exists: the weights are what is refused
    assert main(["predict", "--weights", str(tmp_path / "nope.pt"), str(tmp_path / "x.nii.gz"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "refusing to load a pickle" in err
    assert main(["train", "--model", "unet", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "dataset folder does not exist" in capsys.readouterr().err


def test_device_selection(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto").type in ("cpu", "mps")
    assert select_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        select_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")


def test_precision_selection(monkeypatch):
    from napari_medseg.engine import devices

    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)
    assert select_precision(torch.device("cpu")).dtype == torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)
    assert select_precision(torch.device("cpu")).dtype is None
    assert select_precision(torch.device("cpu"), "fp32").name == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    p = select_precision(torch.device("cuda"))
    assert p.dtype == torch.float16 and p.scaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert select_precision(torch.device("cuda")) == Precision("cuda", torch.bfloat16)
    with pytest.raises(ValueError, match="fp16 autocast is not supported for training on CPU"):
        select_precision(torch.device("cpu"), "fp16")


def test_explicit_bf16_on_a_cpu_without_it_warns_once_with_the_measured_slowdown(monkeypatch):
    import warnings

    from napari_medseg.engine import devices

    measure = devices.cpu_bf16_slowdown
    monkeypatch.setattr(devices, "_warned_bf16", False)
    monkeypatch.setattr(devices, "cpu_bf16_slowdown", lambda: 37.4)
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CPU has bf16: no warning
        assert select_precision(torch.device("cpu"), "bf16").dtype == torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_precision(torch.device("cpu"), "auto").dtype is None  # auto stays fp32: no warning
    with pytest.warns(devices.PrecisionWarning, match="37.4x the time of fp32") as caught:
        assert select_precision(torch.device("cpu"), "bf16").dtype == torch.bfloat16  # honoured
        select_precision(torch.device("cpu"), "bf16")
    assert len(caught) == 1  # once per process
    assert measure.__wrapped__() > 0  # the measurement itself runs


def test_an_existing_run_is_never_replaced_silently(tiny, tmp_path, capsys):
    """A second `train` into a run folder is refused (exit 2, the old run untouched) unless --resume or
    --overwrite is given; --overwrite replaces it."""
    from napari_medseg.cli import main

    out = tmp_path / "run"
    args = ["train", "--model", "unet", "--data", str(tiny["kvasir-seg"]), "--out", str(out), "--epochs", "1",
            "--batch-size", "2", "--input-size", "64", "--precision", "fp32", "--max-steps", "1"]
    assert main(args) == 0
    before = (out / "last" / "model.safetensors").read_bytes()
    history = (out / "history.json").read_text()
    assert main(args + ["--seed", "5"]) == 2
    assert "already holds a run (last/ and best/)" in capsys.readouterr().err
    assert (out / "last" / "model.safetensors").read_bytes() == before
    assert (out / "history.json").read_text() == history
    assert main(args + ["--seed", "5", "--overwrite"]) == 0
    assert (out / "last" / "model.safetensors").read_bytes() != before
    assert main(args + ["--resume", "--overwrite"]) == 2


def test_outputs_follow_the_umask_not_tempfile_modes(tmp_path):
    """Atomic writes go through mkstemp/mkdtemp (0600/0700); what lands must have the umask's modes so
    colleagues on a shared server can read results and checkpoints."""
    import os
    import stat

    from napari_medseg.engine.checkpoint import save_checkpoint
    from napari_medseg.io.atomic import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "result.json", "{}")
        ck = save_checkpoint(tmp_path / "ck", torch.nn.Linear(2, 2), {"model": {"name": "x"}})
        os.umask(0o077)
        write_text_atomic(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "result.json") == 0o644
    assert mode(ck) == 0o755
    assert {mode(f) for f in ck.iterdir()} == {0o644}
    assert mode(tmp_path / "private.json") == 0o600


def test_a_bug_is_not_reported_as_bad_input(monkeypatch, capsys):
    """KeyError from a programming error must show its traceback, not 'error: ...' with exit 2."""
    from napari_medseg import cli

    def broken(args):
        return {}["missing"]

    parser = cli.build_parser()
    args = parser.parse_args(["models"])
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, a: args})())
    args.func = broken
    with pytest.raises(KeyError):
        cli.main(["models"])


def test_memory_error_is_not_an_unreadable_image(monkeypatch, shared):
    from PIL import Image

    def boom(self):
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(Image.Image, "load", boom)
    png = next((shared / "ph2" / "images").iterdir())
    with pytest.raises(MemoryError):
        io.read_image2d(png)


def test_predict_says_why_nothing_was_read(shared, tmp_path, capsys):
    from napari_medseg.cli import main

    assert main(["predict", "--model", "unet-kvasir-192", str(shared / "kvasir-seg"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no images, NIfTI volumes or DICOM series in this folder" in err and "images" in err
    assert main(["predict", "--model", "unet-kvasir-192", str(tmp_path / "missing.png"), "--out", str(tmp_path)]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_fine_tune_from_a_checkpoint_with_other_classes_and_a_frozen_encoder(tiny, trained, tmp_path):
    """--init: same network and size; the head is re-initialised when the classes differ (said in a note);
    --freeze encoder keeps the encoder tensors exactly as loaded; the config records where it started."""
    from napari_medseg.engine.events import Note
    from safetensors.torch import load_file

    data = tmp_path / "grey"  # grey images with 2 classes; the start is the 4-class cardiac (grey) model
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        img = rng.integers(0, 256, (48, 48)).astype(np.uint8)
        io.write_image2d(data / "images" / f"c{i}.png", img, kind="image")
        io.write_image2d(data / "masks" / f"c{i}.png", (img > 128).astype(np.uint8))
    notes = []
    res = train(_opts("unet", data, tmp_path / "ft", epochs=1, init=trained["vol"], freeze="encoder"),
                callback=lambda e: notes.append(e.text) if isinstance(e, Note) else None)
    cfg = ckpt.read_config(res["last_checkpoint"])
    assert cfg["init"]["from"] == trained["vol"] and cfg["init"]["frozen"] == "encoder"
    assert any("re-initialised" in n and "final_conv" in n for n in notes), notes
    assert cfg["training"]["finetune"] is True
    before, after = load_file(str(Path(trained["vol"]) / "model.safetensors")), ckpt.load_weights(res["last_checkpoint"])
    enc = [k for k in after if k.startswith(("net.conv_0.", "net.down_"))]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc if "running" not in k and "num_batches" not in k)
    dec = [k for k in after if k.startswith("net.upcat_") and after[k].is_floating_point() and k in before]
    assert any(not torch.equal(before[k], after[k]) for k in dec)  # the rest trained


def test_fine_tune_refuses_another_network(trained, tiny, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="same network and size"):
        train(_opts("bcdunet", tiny["kvasir-seg"], tmp_path / "x", init=trained["seg"]))


@pytest.mark.parametrize("network,dataset", [("unet", "kvasir-seg"), ("bilateral", "kvasir-seg"),
                                             ("bcdunet", "kvasir-seg"), ("lstmsa", "acdc"),
                                             ("hourglass", "spine-discs")])
def test_init_works_for_every_network(network, dataset, tiny, tmp_path):
    """One step from a checkpoint of the same network with the encoder frozen: the encoder tensors are
    exactly the loaded ones, the other trainable tensors moved."""
    from safetensors.torch import load_file

    from napari_medseg import models

    size = 128 if network == "hourglass" else 64
    kw = dict(epochs=1, input_size=size, batch_size=2, max_steps_per_epoch=1)
    start = train(_opts(network, tiny[dataset], tmp_path / "start", **kw))["last_checkpoint"]
    res = train(_opts(network, tiny[dataset], tmp_path / "ft", init=start, freeze="encoder", lr=1e-2, **kw))
    before = load_file(str(Path(start) / "model.safetensors"))
    after = ckpt.load_weights(res["last_checkpoint"])
    prefixes = models.REGISTRY[network].encoder_prefixes
    params = {n for n, _ in models.build(network, "small").named_parameters()}
    enc = [k for k in before if k.startswith(prefixes)]  # parameters and normalisation statistics
    rest = [k for k in params if not k.startswith(prefixes) and k in before]
    assert enc and rest
    assert all(torch.equal(before[k], after[k]) for k in enc), "a frozen tensor changed"
    assert sum(not torch.equal(before[k], after[k]) for k in rest) > len(rest) // 4, "training changed nothing"


def test_every_train_flag_reaches_the_trainer(monkeypatch):
    """A flag the CLI accepts but does not hand on trains another way than its command says (it happened:
    `--schedule` was dropped, so recipes asking for a cosine schedule trained at the recipe's default).
    Every flag of `train`, set away from its default, must arrive in TrainOptions."""
    from napari_medseg.cli import build_parser, main
    from napari_medseg.engine.train import TrainOptions

    seen = {}

    def fake_train(model, data, out, callback=None, cancel=None, **kw):
        seen.update(TrainOptions(model=model, data=data, out=out, **kw).__dict__)
        return {"reason": "done"}

    monkeypatch.setattr(api, "train", fake_train)
    argv = ["train", "--model", "unet", "--data", "D", "--out", "O", "--size", "paper", "--epochs", "3",
            "--batch-size", "5", "--lr", "0.01", "--device", "cpu", "--precision", "fp32", "--resume", "--overwrite",
            "--seed", "7", "--input-size", "64", "--patience", "2", "--workers", "1", "--compile",
            "--memory-format", "contiguous", "--recipe", "bcdunet", "--no-augment", "--balance-levels",
            "--no-disc-depth", "--disc-extrapolate", "--disc-square-crops", "0.5", "--no-partial-labels", "--hu-window", "-1000", "1000", "--loss", "ce", "--schedule", "cosine", "--option", "cell=none", "--init", "unet-ph2",
            "--freeze", "encoder", "--extra-train", "E", "--max-cases", "4", "--max-steps", "6"]
    train_parser = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    flags = [a for a in train_parser._actions if a.option_strings and a.dest != "help"]
    missing = [a.option_strings[0] for a in flags if not set(a.option_strings) & set(argv)]
    assert not missing, f"add these train flags to this test: {missing}"
    assert main(argv) == 0
    want = {"model": "unet", "data": "D", "out": "O", "size": "paper", "epochs": 3, "batch_size": 5, "lr": 0.01,
            "device": "cpu", "precision": "fp32", "resume": True, "overwrite": True, "seed": 7, "input_size": 64,
            "patience": 2, "num_workers": 1, "compile": True, "memory_format": "contiguous", "recipe": "bcdunet",
            "augment": False, "balance_levels": True, "disc_depth": False, "loss": "ce", "schedule": "cosine",
            "model_options": {"cell": "none"}, "init": "unet-ph2", "freeze": "encoder", "extra_train": ["E"],
            "max_cases": 4, "max_steps_per_epoch": 6, "disc_extrapolate": True, "disc_square_crops": 0.5, "partial_labels": False, "hu_window": [-1000.0, 1000.0]}
    assert {k: seen[k] for k in want} == want
