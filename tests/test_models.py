"""The networks: shapes, gradients, parameter counts, determinism, export, overfitting, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from napari_medseg import models
from napari_medseg.models.bilateral import BilateralAttentionNet, point_loss, uncertainty
from napari_medseg.models.convlstm import ConvLSTM, ConvLSTMCell

NAMES = ["lstmsa", "bilateral", "bcdunet", "hourglass", "unet"]
torch.set_num_threads(2)


def _input(model, size=64, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.in_channels, size, size, generator=g)


def _main_output(out):
    return out["heatmaps"] if isinstance(out, dict) and "heatmaps" in out else (
        out["logits"] if isinstance(out, dict) else out)


def _loss(model, out, x):
    """A loss touching every output the model produces (main + auxiliary terms)."""
    if isinstance(out, dict) and "stack_heatmaps" in out:
        return out["stack_heatmaps"].square().mean()
    main = _main_output(out)
    loss = main.square().mean()
    if isinstance(out, dict) and "point_logits" in out:
        target = (x[:, :1] > 0).float()
        loss = loss + point_loss(out, target)
    return loss


def test_available_lists_all_five():
    entries = {e["name"]: e for e in models.available()}
    assert set(entries) == set(NAMES)
    assert entries["hourglass"]["task"] == "keypoints" and entries["hourglass"]["output"] == "heatmaps"
    assert entries["lstmsa"]["input"] == "2d+2.5d"
    for e in entries.values():
        assert e["sizes"] == ["paper", "small"]
        assert e["parameters"]["small"] < e["parameters"]["paper"]
        assert e["recipe"]["optimizer"] in ("adam", "rmsprop")


@pytest.mark.parametrize("name,options,expected", [
    ("bilateral", {}, 6.36e6),
    ("bcdunet", {"direction": "reverse"}, 20.7e6),  # the published configuration
    ("bcdunet", {"direction": "reverse", "dense_blocks": 1}, 8.9e6),
    ("hourglass", {}, 6.6e6),
])
def test_paper_parameter_counts(name, options, expected):
    n = sum(p.numel() for p in models.build(name, "paper", **options).parameters())
    assert abs(n - expected) / expected < 0.05, n


def test_lstmsa_head_parameter_count():
    model = models.build("lstmsa", "paper")
    cells = sum(p.numel() for m in (model.forward_cell, model.reverse_cell) for p in m.parameters())
    assert abs(cells - 1.66e6) / 1.66e6 < 0.05
    assert model.head_parameters() == cells + 128 * 4 + 4


@pytest.mark.parametrize("size", ["small", "paper"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name, size):
    torch.manual_seed(0)
    model = models.build(name, size)
    x = _input(model)
    model.train()
    out = model(x)
    main = _main_output(out)
    assert main.shape == (2, model.num_classes, 64, 64)
    _loss(model, out, x).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, model.num_classes, 64, 64)


@pytest.mark.parametrize("size", ["small", "paper"])
def test_lstmsa_25d(size):
    model = models.build("lstmsa", size).eval()
    x = torch.randn(2, 3, 1, 32, 32)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 4, 32, 32)
        # a single slice equals the 2.5D stack of three copies of it
        single = model(x[:, 1])
        triple = model(x[:, 1:2].expand(-1, 3, -1, -1, -1).contiguous())
    torch.testing.assert_close(single, triple, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic(name, tmp_path):
    """Two instances of a network with the same weights (one built, one loaded from a checkpoint written by
    the other) give bit-identical outputs on one input, and so do two calls of one instance."""
    from napari_medseg.engine import checkpoint as ckpt

    torch.manual_seed(11)
    model = models.build(name).eval()
    ckpt.save_checkpoint(tmp_path / "c", model, {"model": model.medseg_info})  # name, size, channels, classes
    other, _ = ckpt.load_model(tmp_path / "c")
    x = _input(model, seed=3)
    with torch.no_grad():
        first = model(x)
        torch.testing.assert_close(other(x), first, rtol=0, atol=0)
        torch.testing.assert_close(model(x), first, rtol=0, atol=0)


# Tracing folds the networks' input checks and shape arithmetic into constants (TracerWarning) and uses
# torch.jit.trace, deprecated upstream (DeprecationWarning); the test checks that the traced and ONNX
# models still match eager on an input they were not traced with, which is what those warnings ask for.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")
@pytest.mark.parametrize("name", NAMES)
def test_trace_and_onnx_match_eager(name, tmp_path):
    import onnxruntime
    torch.manual_seed(1)
    model = models.build(name).eval()
    x = _input(model, batch=1, seed=4)
    with torch.no_grad():
        ref = model(x)
        traced = torch.jit.trace(model, (x,), check_trace=False)
        torch.testing.assert_close(traced(x), ref, rtol=1e-4, atol=1e-4)
    path = tmp_path / f"{name}.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17)
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_overfits_one_pair(name):
    """A few optimizer steps on one tiny image/target pair drive the loss down."""
    torch.manual_seed(0)
    model = models.build(name, num_classes=2 if name != "hourglass" else 3).train()
    x = _input(model, batch=2, seed=5)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    if name == "hourglass":
        centres = [(16, 20), (32, 40), (48, 30)]
        target = torch.stack([torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 10.0) for cy, cx in centres])
        target = target.expand(2, -1, -1, -1)
    else:
        target = ((yy - 32) ** 2 + (xx - 32) ** 2 < 200).long().expand(2, -1, -1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3 if name == "hourglass" else 3e-3)
    losses = []
    for _ in range(8):
        out = model(x)
        if name == "hourglass":
            loss = F.mse_loss(out["stack_heatmaps"], target.unsqueeze(1).expand_as(out["stack_heatmaps"]))
        else:
            logits = _main_output(out)
            loss = F.cross_entropy(logits, target)
            if isinstance(out, dict) and "point_logits" in out:
                loss = loss + point_loss(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-2:]) < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_messages(name):
    model = models.build(name).eval()
    c, m = model.in_channels, models.REGISTRY[name].multiple
    with pytest.raises(ValueError, match=rf"expected {c} input channel\(s\), got {c + 1}"):
        model(torch.zeros(1, c + 1, 64, 64))
    with pytest.raises(ValueError, match="expected 4-D"):
        model(torch.zeros(c, 64, 64))
    bad = torch.zeros(1, c, 64, 64)
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(bad)
    with pytest.raises(ValueError, match=rf"multiple of {m}; the nearest valid size is {m * 2}x{m * 2}"):
        model(torch.zeros(1, c, 2 * m + 3, 2 * m + 3))


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown network 'vnet'"):
        models.build("vnet")
    with pytest.raises(ValueError, match="unknown size"):
        models.build("unet", "huge")


# ---------------------------------------------------------------- ConvLSTM


def _naive_step(cell: ConvLSTMCell, x, h, c):
    """Per-gate reference: split the fused convolution into four separate ones."""
    w, b = cell.gates.weight, cell.gates.bias
    hc = cell.hidden_channels
    inp = torch.cat([x, h], 1)
    pad = w.shape[-1] // 2
    gate = [F.conv2d(inp, w[k * hc:(k + 1) * hc], b[k * hc:(k + 1) * hc], padding=pad) for k in range(4)]
    i, f, o, g = torch.sigmoid(gate[0]), torch.sigmoid(gate[1]), torch.sigmoid(gate[2]), torch.tanh(gate[3])
    c = f * c + i * g
    return o * torch.tanh(c), c


def test_convlstm_cell_matches_naive_reference():
    torch.manual_seed(0)
    cell = ConvLSTMCell(3, 5, kernel_size=3)
    x = torch.randn(2, 4, 3, 8, 8)
    h = c = torch.zeros(2, 5, 8, 8)
    state = None
    for t in range(4):
        h, c = _naive_step(cell, x[:, t], h, c)
        state = cell(x[:, t], state)
    torch.testing.assert_close(state[0], h)
    torch.testing.assert_close(state[1], c)


def test_convlstm_directions():
    torch.manual_seed(0)
    seq = torch.randn(2, 3, 4, 8, 8)
    bi = ConvLSTM(4, 6, direction="bidirectional")
    fwd = ConvLSTM(4, 6, direction="forward")
    rev = ConvLSTM(4, 6, direction="reverse")
    fwd.cell.load_state_dict(bi.cell.state_dict())
    rev.cell.load_state_dict(bi.cell_backward.state_dict())
    torch.testing.assert_close(bi(seq), fwd(seq) + rev(seq))
    # reverse really reads the sequence backwards
    fwd2 = ConvLSTM(4, 6, direction="forward")
    fwd2.cell.load_state_dict(rev.cell.state_dict())
    torch.testing.assert_close(rev(seq), fwd2(seq.flip(1)))
    with pytest.raises(ValueError, match="direction"):
        ConvLSTM(4, 6, direction="sideways")


# ---------------------------------------------------------------- variants


@pytest.mark.parametrize("name,options", [
    ("bcdunet", {"dense_blocks": 1}),
    ("bcdunet", {"direction": "reverse"}),
    ("lstmsa", {"cell": "convlstm"}),
    ("hourglass", {"attention": False}),
    ("bilateral", {"render": False}),
])
def test_variants_run(name, options):
    model = models.build(name, **options).eval()
    with torch.no_grad():
        assert model(_input(model, batch=1)).shape[1] == model.num_classes


def test_bilateral_instance_norm_normalises_each_image_alone():
    """``norm="instance"``: no BatchNorm left, the zero-initialised residual scales still zero, and in
    training mode an image's logits do not depend on the other images of its batch (with BN they do)."""
    torch.manual_seed(0)
    batch = models.build("bilateral", num_classes=2, render=False)
    torch.manual_seed(0)
    inst = models.build("bilateral", num_classes=2, render=False, norm="instance")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in inst.modules())
    norms = [m for m in inst.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in batch.modules())
    assert all(m.affine and not m.track_running_stats for m in norms)
    assert not inst.encoder[0][0].body[-1].weight.detach().any()  # zero_init_residual kept
    x = torch.rand(4, 3, 64, 64)
    for net, alone in ((inst, True), (batch, False)):
        net.train()
        with torch.no_grad():
            together, single = net(x)["logits"][:1], net(x[:1].repeat(4, 1, 1, 1))["logits"][:1]
        assert torch.allclose(together, single, atol=1e-5) is alone
    with pytest.raises(ValueError, match="norm must be one of batch, instance"):
        models.build("bilateral", norm="group")


def test_hourglass_any_number_of_discs():
    model = models.build("hourglass", num_classes=6).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 6, 64, 64)


def test_bilateral_rendering_train_vs_inference():
    torch.manual_seed(0)
    model = BilateralAttentionNet(size="small", train_points=256, subdivision_points=100, decoder="stride4")
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert out["point_logits"].shape == (2, 1, 256) and out["point_coords"].shape == (2, 256, 2)
    assert (out["point_coords"] >= 0).all() and (out["point_coords"] <= 1).all()
    # importance sampling: the chosen points are more uncertain than random ones on average
    coarse = F.interpolate(out["logits"], size=(16, 16), mode="bilinear", align_corners=False)
    from napari_medseg.models.bilateral import point_sample

    unc = uncertainty(point_sample(coarse.detach(), out["point_coords"]))[:, 0]
    assert unc[:, :192].mean() > unc[:, 192:].mean()
    # inference: only the most uncertain pixels of each upsampling step change
    model.eval()
    with torch.no_grad():
        refined = model(x)
    assert refined.shape == (2, 1, 64, 64) and torch.isfinite(refined).all()
    with torch.no_grad():
        enc = []
        f = x
        for stage in model.encoder:
            f = stage(f)
            enc.append(f)
        coarse = model.coarse_head(model.up2(model.up3(model.fsam(model.isam(enc[4])), enc[3]), enc[2]))
        up1 = F.interpolate(coarse, scale_factor=2.0, mode="bilinear", align_corners=False)
        up2 = F.interpolate(up1, scale_factor=2.0, mode="bilinear", align_corners=False)
    changed = (refined != up2).flatten(1).sum(1)
    # the second step re-predicts exactly 100 pixels; the first step's 100 changes spread to at most
    # their bilinear neighbourhood (4x4 each) in the final map
    assert (changed >= 100).all() and (changed <= 100 + 16 * 100).all()
    # the U-shaped decoder: one rendering step at full resolution re-predicts exactly 100 pixels
    full = BilateralAttentionNet(size="small", subdivision_points=100).eval()
    dense = {}
    full.coarse_head.register_forward_hook(lambda m, i, o: dense.setdefault("t", o))
    with torch.no_grad():
        refined = full(x)
    assert dense["t"].shape == refined.shape == (2, 1, 64, 64)
    assert ((refined != dense["t"]).flatten(1).sum(1) == 100).all()


def test_bilateral_swin_weights_file(tmp_path):
    from safetensors.torch import save_file

    donor = BilateralAttentionNet(size="small")
    state = {f"layers1.0.{k}": v.clone() for k, v in donor.isam.swin.state_dict().items()}
    save_file(state, str(tmp_path / "swin.safetensors"))
    model = BilateralAttentionNet(size="small", swin_weights=tmp_path / "swin.safetensors")
    for k, v in donor.isam.swin.state_dict().items():
        torch.testing.assert_close(model.isam.swin.state_dict()[k], v)
    save_file({"nothing.here": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="no Swin block weights"):
        BilateralAttentionNet(size="small", swin_weights=tmp_path / "bad.safetensors")


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_is_sane(name):
    torch.manual_seed(0)
    model = models.build(name).eval()
    x = _input(model, batch=1, seed=6)
    if name == "bilateral":
        # rendering re-predicts the most uncertain pixels, a discrete choice that bf16 rounding flips for
        # near-ties (at init almost every logit is one): the rendered output must be finite, and the
        # continuous path (no rendering) is compared below
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(model(x)).all()
        model.render = False
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert torch.isfinite(low).all()
    err = (low.float() - ref).abs().max().item()
    scale = ref.abs().max().item() + 1e-3
    assert err / scale < 0.1, (err, scale)
    assert math.isfinite(err)


@pytest.mark.parametrize("cell_name", ["convlstm", "lstmsa"])
def test_zero_state_shortcut_is_exact(cell_name):
    """The first step skips the h half of the gate convolution: same result as an explicit zero state."""
    from napari_medseg.models.lstmsa import SACell

    torch.manual_seed(0)
    cell = (ConvLSTMCell(6, 6, 5) if cell_name == "convlstm" else SACell(6, 6, 5)).eval()
    x = torch.randn(2, 6, 8, 8)
    zeros = torch.zeros(2, 6, 8, 8)
    for a, b in zip(cell(x, None), cell(x, (zeros, zeros))):
        torch.testing.assert_close(a, b)


def test_listed_parameter_counts_are_those_of_the_built_networks():
    """`models.available()` reads counts from a table (no network is built to list them): check it."""
    from napari_medseg.models.registry import LSTMSA_HEAD_PARAMETERS, PARAMETERS, _lstmsa_head

    for name in models.REGISTRY:
        for size in ("paper", "small"):
            assert PARAMETERS[name][size] == models.parameter_count(name, size), (name, size)
    assert LSTMSA_HEAD_PARAMETERS == {s: _lstmsa_head(s) for s in ("paper", "small")}
    assert models.available()[0]["parameters"] == PARAMETERS["lstmsa"]


@pytest.mark.parametrize("name", NAMES)
def test_size_multiples_are_the_registry_s(name):
    """Each network accepts inputs whose sides are multiples of ``ModelInfo.multiple`` and refuses the next
    size that is not (the registry is the one statement of the rule the networks check)."""
    m = models.REGISTRY[name].multiple
    model = models.build(name).eval()
    with torch.no_grad():
        model(torch.zeros(1, model.in_channels, 2 * m, 2 * m))
        with pytest.raises(ValueError, match=f"multiple of {m}"):
            model(torch.zeros(1, model.in_channels, 2 * m + m // 2, 2 * m))
