"""Inference runtimes and export: the onnxruntime graph gives the labels of eager fp32 on real inputs, is
exported once per weights and shape, is refused where it cannot run; `napari-medseg export` writes a graph
that computes what the eager network computes, with the card beside it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_medseg import api, io
from napari_medseg.cli import main
from napari_medseg.engine import runtime


def _kvasir_source(shared):
    from napari_medseg.engine import data as D

    layout = D.discover(shared / "kvasir-seg")
    return layout.pairs[D.split(layout)["test"][0]][0]


def _kvasir_image(shared):
    return io.read(_kvasir_source(shared))[0]


def test_choose_runtime_follows_the_measured_choice_and_refuses_what_cannot_run(monkeypatch):
    from napari_medseg import models

    from napari_medseg.engine import devices

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)  # a laptop: eager would run fp32
    for name, info in models.REGISTRY.items():
        assert runtime.choose_runtime("auto", name, cpu, "fp32") == info.cpu_runtime, name
        assert runtime.choose_runtime("auto", name, cpu, "auto") == info.cpu_runtime, name
        assert runtime.choose_runtime("auto", name, cpu, "bf16") == "torch"  # onnxruntime computes fp32
        assert runtime.choose_runtime("auto", name, cuda, "fp32") == "torch"
        assert runtime.choose_runtime("torch", name, cpu, "fp32") == "torch"
    assert any(info.cpu_runtime == "onnxruntime" for info in models.REGISTRY.values())
    pred = api.load("unet-kvasir-192", device="cpu")  # auto: the graph, which computes in fp32
    assert (pred.runtime, pred.precision.name) == ("onnxruntime", "fp32")
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)  # AVX512-BF16 / AMX: measured against bf16
    pred = api.load("unet-kvasir-192", device="cpu", precision="bf16")  # asked for bf16: eager
    assert (pred.runtime, pred.precision.name) == ("torch", "bf16")
    for name, info in models.REGISTRY.items():
        assert runtime.choose_runtime("auto", name, cpu, "auto") == info.bf16_cpu_runtime, name
        assert runtime.choose_runtime("auto", name, cpu, "fp32") == info.cpu_runtime, name
    assert {models.REGISTRY[n].bf16_cpu_runtime for n in ("bcdunet", "unet")} == {"torch", "onnxruntime"}
    pred = api.load("unet-kvasir-192", device="cpu")  # auto on a bf16 CPU: the graph, faster than eager bf16
    assert (pred.runtime, pred.precision.name) == ("onnxruntime", "fp32")
    pred = api.load("bcdunet-ph2", device="cpu")  # ... but BCDU-Net's eager bf16 is the faster
    assert (pred.runtime, pred.precision.name) == ("torch", "bf16")
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)
    with pytest.raises(ValueError, match="computes in fp32"):
        runtime.choose_runtime("onnxruntime", "unet", cpu, "bf16")
    with pytest.raises(ValueError, match="runs on the CPU"):
        runtime.choose_runtime("onnxruntime", "unet", cuda, "fp32")
    with pytest.raises(ValueError, match="unknown runtime"):
        runtime.choose_runtime("tensorrt", "unet", cpu, "fp32")
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)
    assert runtime.choose_runtime("auto", "unet", cpu, "fp32") == "torch"
    with pytest.raises(ValueError, match="pip install onnxruntime"):
        runtime.choose_runtime("onnxruntime", "unet", cpu, "fp32")


def test_predict_passes_runtime_and_precision_to_the_predictor(shared, tmp_path, monkeypatch, capsys):
    """`predict --precision/--runtime` reach the Predictor (`--precision fp32 --runtime auto` is what `auto`
    does on a CPU without bf16: the graph), and the user is told what ran."""
    from napari_medseg.engine import devices

    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)  # as on this project's CPUs
    loaded, load = [], api.load
    monkeypatch.setattr(api, "load", lambda *a, **k: loaded.append(load(*a, **k)) or loaded[-1])
    src = _kvasir_source(shared)
    for extra, want in (([], ("onnxruntime", "fp32")), (["--precision", "bf16"], ("torch", "bf16")),
                        (["--precision", "fp32"], ("onnxruntime", "fp32")),
                        (["--precision", "fp32", "--runtime", "torch"], ("torch", "fp32"))):
        out = tmp_path / f"out{len(loaded)}"
        assert main(["predict", "--model", "unet-kvasir-192", "--device", "cpu", *extra, str(src), "--out", str(out)]) == 0
        assert (loaded[-1].runtime, loaded[-1].precision.name) == want, extra
        assert f"ran on cpu: runtime {want[0]}, {want[1]}" in capsys.readouterr().err  # the user sees it
        assert (out / f"{src.stem}_seg.png").is_file()


@pytest.mark.parametrize("name", ["unet-kvasir-192", "bilateral-kvasir-192"])
def test_onnxruntime_labels_are_the_eager_labels_and_the_graph_is_cached(name, shared, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(tmp_path / "cache"))
    vol = _kvasir_image(shared)
    eager = api.load(name, device="cpu", precision="fp32", runtime="torch")
    graph = api.load(name, device="cpu", precision="fp32", runtime="onnxruntime")
    assert (eager.runtime, graph.runtime) == ("torch", "onnxruntime")
    a = np.asarray(api.segment(vol, predictor=eager).labels)
    b = np.asarray(api.segment(vol, predictor=graph).labels)
    assert a.shape == b.shape and 0.05 < (a > 0).mean() < 0.95  # a real polyp mask, not empty
    assert (a == b).mean() >= 0.999, (a != b).sum()
    cached = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(cached) == 1 and cached[0].name.startswith(runtime.weights_digest(graph.source / "model.safetensors")[:24])

    def no_export(*_a, **_k):
        raise AssertionError("exported again although the graph is cached")

    monkeypatch.setattr(runtime, "export_onnx", no_export)
    again = api.load(name, device="cpu", precision="fp32", runtime="onnxruntime")
    np.testing.assert_array_equal(np.asarray(api.segment(vol, predictor=again).labels), b)


@pytest.mark.filterwarnings("ignore::napari_medseg.engine.discs.DiscsFlagged")  # the scan is flagged (results.md)
def test_onnxruntime_disc_positions_are_the_eager_positions(shared, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(tmp_path / "cache"))
    from napari_medseg.io import datasets

    vol = io.read(datasets.fetch("mr_lumbar"))[0]
    a = api.label_discs(vol, model="hourglass-spine-discs", runtime="torch", device="cpu")
    b = api.label_discs(vol, model="hourglass-spine-discs", runtime="onnxruntime", device="cpu")
    assert a.numbers == b.numbers and len(a) >= 6
    assert np.abs(a.voxels() - b.voxels()).max() <= 0.5


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_writes_a_graph_that_computes_the_eager_network(fmt, shared, tmp_path):
    out = tmp_path / ("unet.onnx" if fmt == "onnx" else "unet.pt")
    assert main(["export", "--model", "unet-kvasir-192", "--format", fmt, str(out)]) == 0
    card = json.loads(out.with_name(out.name + ".json").read_text())
    assert card["export"]["input_shape"] == ["batch", 3, 192, 192] and card["export"]["output"] == "logits"
    assert card["preprocessing"]["normalize"] and card["card"]["name"] == "unet-kvasir-192"
    pred = api.load("unet-kvasir-192", device="cpu", precision="fp32", runtime="torch")
    x = torch.rand(2, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = pred.model(x)
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])  # batch 2: dynamic
    else:
        got = torch.jit.load(str(out))(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert main(["export", "--model", "unet-kvasir-192", str(tmp_path)]) == 2  # a folder is not a file


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_cached_graph_is_rebuilt_once_with_a_warning(damage, shared, tmp_path, monkeypatch):
    """A graph cut short or overwritten in the cache (an interrupted copy, a full disk) used to make every
    later prediction die with onnxruntime's INVALID_PROTOBUF until the user found the file."""
    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(tmp_path / "cache"))
    vol = _kvasir_image(shared)
    first = api.load("unet-kvasir-192", device="cpu", precision="fp32", runtime="onnxruntime")
    want = np.asarray(api.segment(vol, predictor=first).labels)
    (path,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3] if damage == "truncated" else b"\x00not a graph" * 100)
    with pytest.warns(runtime.GraphCacheWarning, match="could not be loaded .*rebuilding it"):
        again = api.load("unet-kvasir-192", device="cpu", precision="fp32", runtime="onnxruntime")
    np.testing.assert_array_equal(np.asarray(api.segment(vol, predictor=again).labels), want)
    assert path.read_bytes() == good  # the cache holds a good graph again


def test_a_graph_that_cannot_be_rebuilt_is_one_clear_error(shared, tmp_path, monkeypatch):
    from napari_medseg.io.errors import MedSegIOError

    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(tmp_path / "cache"))

    def broken_export(model, sample, path):  # a disk that keeps writing damaged files
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x00" * 64)
        return path

    monkeypatch.setattr(runtime, "export_onnx", broken_export)
    with pytest.warns(runtime.GraphCacheWarning), pytest.raises(MedSegIOError, match="cannot be loaded either"):
        api.load("unet-kvasir-192", device="cpu", precision="fp32", runtime="onnxruntime")
