"""One preprocessing description for training and inference, and splits that stay with the run."""

import json
from pathlib import Path
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from napari_medseg import api, io, models
from napari_medseg.engine import data as D
from napari_medseg.engine.infer import Predictor, class_argmax
from napari_medseg.engine.train import TrainOptions, train
from napari_medseg.geometry import layer_to_volume

SIZE = (32, 32)


def _image(kind: str, rng) -> tuple[io.Volume, np.ndarray]:
    if kind == "uint8 RGB":
        data = rng.integers(0, 256, (40, 56, 3)).astype(np.uint8)
    elif kind == "uint16 RGB":
        data = rng.integers(0, 4096, (40, 56, 3)).astype(np.uint16)
    elif kind == "uint16 grey":
        data = rng.integers(0, 4096, (40, 56)).astype(np.uint16)
    elif kind == "float grey":
        data = rng.normal(100.0, 30.0, (40, 56)).astype(np.float32)
    elif kind == "float volume":
        data = rng.normal(0.0, 200.0, (10, 40, 56)).astype(np.float32)
    else:  # int16 CT-like volume
        data = rng.integers(-1000, 2000, (10, 40, 56)).astype(np.int16)
    rgb = data.ndim == 3 and data.shape[-1] == 3
    labels = (rng.random(data.shape[:-1] if rgb else data.shape) > 0.7).astype(np.uint8)
    return layer_to_volume(data, matrix=np.diag([2.0] * (data.ndim - rgb) + [1.0]), rgb=rgb, name=kind), labels


def _predictor(prepared: D.Prepared, model: str = "unet") -> Predictor:
    c = prepared.images.shape[-3]
    net = models.build(model, "small", in_channels=c, num_classes=2)
    cfg = {"model": {"name": model, "size": "small", "in_channels": c, "num_classes": 2, "task": "segmentation"},
           "preprocessing": prepared.preprocessing}
    return Predictor(net, cfg, device="cpu", precision="fp32")


EXPECTED_NORM = {"uint8 RGB": "rgb01", "uint16 RGB": "minmax", "uint16 grey": "minmax", "float grey": "minmax",
                 "float volume": "zscore", "int16 volume": "zscore"}


CASES = [(kind, "unet") for kind in EXPECTED_NORM] + [("float volume", "lstmsa"), ("int16 volume", "lstmsa")]


@pytest.mark.parametrize("kind,model", CASES)  # LSTMSA's 2.5D stacks apply to volumes
def test_inference_input_equals_training_input(kind, model, monkeypatch):
    rng = np.random.default_rng(0)
    vol, labels = _image(kind, rng)
    context = 1 if model == "lstmsa" else 0
    prepared, ax = D.from_volumes(vol, labels, size=SIZE, channels=3 if vol.rgb else 1, context=context)
    assert prepared.preprocessing["normalize"] == EXPECTED_NORM[kind]
    pred = _predictor(prepared, model)
    seen = []

    def capture(samples, tta, cancel=None, progress=None):
        seen.extend(samples)
        return torch.zeros((len(samples), 2, *SIZE))

    monkeypatch.setattr(pred, "_batched", capture)
    if ax is None:
        pred.segment_image(vol.data, rgb=vol.rgb)
    else:
        pred.segment_volume(vol)
    assert len(seen) == len(prepared.images)
    for got, want in zip(seen, prepared.images):
        np.testing.assert_array_equal(got, want)  # the same numbers, not merely close


@pytest.mark.parametrize("channels,context", [(1, 0), (3, 0), (1, 1), (3, 1)])
def test_volume_inputs_are_each_slice_resized_on_its_own(channels, context):
    """The batched slice preparation of a real CT (many planes per resize, each plane once) gives exactly
    what resizing each plane alone gives, whatever the chunk; the whole-volume statistics are summed in
    memory order (no copy of the volume) and skip non-finite voxels."""
    from napari_medseg.engine import preprocess as pp

    vol = io.read(Path(api.__file__).parent / "samples" / "ct-abdomen-small.nii.gz")[0]
    prep = pp.Preprocessing.from_config({"input_size": [48, 40], "normalize": "zscore", "context": context},
                                        channels=channels)
    ax, slices = prep.volume_slices(vol.data, vol.affine)
    n, h, w = slices.shape
    ks = [0, 3, n // 2, n - 1]
    for chunk in (1, 3, 16):
        for k, g in zip(ks, prep.volume_samples(slices, ks, chunk=chunk)):
            idx = [min(max(k + d, 0), n - 1) for d in range(-context, context + 1)]
            alone = [torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(slices[i]))[None, None],
                                                     size=(48, 40), mode="bilinear", align_corners=False)[0, 0]
                     for i in idx]
            want = np.stack([np.repeat(a.numpy()[None], channels, 0) for a in alone])
            np.testing.assert_array_equal(g, want if context else want[0])
    clean = np.asarray(vol.data, dtype=np.float32)  # NIfTI volumes are read in Fortran order
    mem = clean.ravel(order="K")  # memory order, no copy: the order the statistics are summed in
    assert pp.volume_stats(clean, "zscore") == (float(mem.mean()), float(mem.std()))
    np.testing.assert_allclose(pp.volume_stats(clean, "zscore"), (clean.mean(), clean.std()), rtol=1e-6)
    dirty = clean.copy(order="K")
    dirty[0, 0, :3] = [np.nan, np.inf, -np.inf]
    finite = dirty.ravel(order="K")[np.isfinite(dirty.ravel(order="K"))]
    assert finite.size == dirty.size - 3
    assert pp.volume_stats(dirty, "zscore") == (float(finite.mean()), float(finite.std()))
    assert pp.volume_stats(dirty, "minmax") == tuple(float(v) for v in np.percentile(finite, [0.5, 99.5]))


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_class_argmax_is_argmax_with_ties_to_the_first_class(k):
    """Labels from class scores: what torch's argmax gives (its ties go to the first maximum), for every
    class count; scores on a coarse grid make ties common."""
    g = torch.Generator().manual_seed(k)
    prob = torch.randint(0, 4, (k, 37, 53), generator=g).float() / 4
    assert k == 1 or (prob.max(0).values == prob.sort(0).values[-2]).any()  # there are ties to break
    labels = class_argmax(prob)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, prob.argmax(0).numpy())


def test_a_folder_and_a_layer_prepare_the_same_2d_input(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 4096, (40, 56)).astype(np.uint16)
    mask = (rng.random((40, 56)) > 0.5).astype(np.uint8)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    io.write_image2d(tmp_path / "images" / "a.png", img, kind="image")
    io.write_image2d(tmp_path / "masks" / "a.png", mask)
    from_folder = D.prepare_seg2d(D.discover(tmp_path), ["a"], SIZE, 1)
    from_layer, _ = D.from_volumes(layer_to_volume(img), mask, size=SIZE, channels=1)
    np.testing.assert_array_equal(from_folder.images, from_layer.images)
    np.testing.assert_array_equal(from_folder.targets, from_layer.targets)
    assert from_folder.preprocessing["normalize"] == from_layer.preprocessing["normalize"] == "minmax"


# ---------------------------------------------------------------- splits


def _dataset(root, n=10, split=None):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
        io.write_image2d(root / "images" / f"case{i:02d}.png", img, kind="image")
        io.write_image2d(root / "masks" / f"case{i:02d}.png", (img[..., 0] > 128).astype(np.uint8))
    if split is not None:
        (root / "split.json").write_text(json.dumps(split))
    return root


def _train(data, out, seed=0):
    return train(TrainOptions(model="unet", data=str(data), out=str(out), epochs=1, batch_size=2, input_size=32,
                              seed=seed, precision="fp32", max_steps_per_epoch=1))


def test_evaluate_scores_the_runs_own_split(tmp_path):
    data = _dataset(tmp_path / "data")
    result = _train(data, tmp_path / "run", seed=7)
    kept = json.loads((tmp_path / "run" / "split.json").read_text())
    assert kept == D.split(D.discover(data), seed=7)
    scored = api.evaluate(str(data), weights=result["best_checkpoint"], device="cpu")
    assert sorted(c["stem"] for c in scored["cases"]) == kept["test"]
    assert not set(kept["test"]) & set(kept["train"])
    assert "own split" in scored["split"]
    # evaluate's old behaviour (seed 0) would have scored other cases: the test above can fail
    assert D.split(D.discover(data), seed=0)["test"] != kept["test"]


def test_a_test_only_split_and_all_cases_can_be_scored(tmp_path):
    train_data = _dataset(tmp_path / "train", split={"train": [f"case{i:02d}" for i in range(8)],
                                                     "val": ["case08"], "test": ["case09"]})
    result = _train(train_data, tmp_path / "run")
    external = _dataset(tmp_path / "external", n=4, split={"test": ["case01", "case03"]})
    scored = api.evaluate(str(external), weights=result["best_checkpoint"], device="cpu")
    assert [c["stem"] for c in scored["cases"]] == ["case01", "case03"]
    assert scored["split"].endswith("split.json")
    everything = api.evaluate(str(external), weights=result["best_checkpoint"], device="cpu", subset="all")
    assert len(everything["cases"]) == 4
    cli = subprocess.run([sys.executable, "-m", "napari_medseg.cli", "evaluate", "--weights",
                          result["best_checkpoint"], "--data", str(external), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert "scored 2 test case(s) from" in cli.stderr


def test_training_without_validation_cases_says_what_it_validates_on(tmp_path):
    data = _dataset(tmp_path / "data", n=4, split={"train": ["case00", "case01", "case02"], "val": [],
                                                   "test": ["case03"]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _train(data, tmp_path / "run")
    assert any("no validation cases" in str(w.message) for w in caught)
    from napari_medseg.engine import checkpoint as ckpt

    cfg = ckpt.read_config(result["best_checkpoint"])
    assert "optimistic" in cfg["data"]["validation"] and "case00" in cfg["data"]["validation"]


def test_prepared_subset_and_join_keep_every_per_sample_array_together():
    import numpy as np

    from napari_medseg.engine.data import Prepared

    def make(n, tag, k=2):
        return Prepared("keypoints", np.arange(n * 3 * 4 * 4, dtype=np.float32).reshape(n, 3, 4, 4) + 1000 * tag,
                        np.full((n, k, 4, 4), tag, np.float32), np.ones((n, k), bool) * (tag % 2 == 0),
                        [f"s{tag}_{i}" for i in range(n)], k, {"input_size": [4, 4]}, [{"case": tag}] * n,
                        np.full((n, 5, 4, 4), tag, np.float32))

    a, b = make(4, 1), make(2, 2)
    sub = a.subset([3, 1])
    assert sub.stems == ["s1_3", "s1_1"] and np.array_equal(sub.images, a.images[[3, 1]])
    assert sub.views.shape == (2, 5, 4, 4) and sub.visible.shape == (2, 2)
    joined = Prepared.join([sub, b], prefixes=[None, "other"])
    assert joined.stems == ["s1_3", "s1_1", "other/s2_0", "other/s2_1"]
    assert np.array_equal(joined.targets[:, 0, 0, 0], [1, 1, 2, 2]) and np.array_equal(joined.visible[:, 0], [0, 0, 1, 1])
    assert joined.views.shape == (4, 5, 4, 4) and len(joined.profiles) == 4
    wrong = Prepared("keypoints", np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 2, 4, 4)), None, ["x"])
    import pytest

    with pytest.raises(ValueError, match="prepared by other rules"):
        Prepared.join([a, wrong])


def test_slice_split_policy_for_layers():
    from napari_medseg.engine.data import slice_split

    train, val, words = slice_split(list(range(10, 20)), 14, 0.2)  # every 5th labelled slice + the current one
    assert val == [14, 12, 17] and train == [10, 11, 13, 15, 16, 18, 19] and "every k-th" in words
    assert not set(train) & set(val)
    assert slice_split([7], 7, 0.2) == ([7], [7], "the training slices themselves (too few labelled slices to hold any out)")
    assert slice_split([0], 0, 0.2, single_image=True)[2].startswith("the training image itself")
