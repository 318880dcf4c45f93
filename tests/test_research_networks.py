"""The research networks as their papers (and reference code) build them, and recipes the trainer honours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_medseg import models
from napari_medseg.engine import data as D
from napari_medseg.engine import preprocess as pp
from napari_medseg.engine import tasks
from napari_medseg.engine.losses import binary_ce
from napari_medseg.engine.train import TrainOptions, resolve, train
from napari_medseg.models import bilateral as B
from napari_medseg.models.bcdunet import BCDUNet

from .conftest import train_opts

# ---------------------------------------------------------------- bilateral


def test_bilateral_refinement_samples_the_coarse_logits(monkeypatch):
    """PointRend inference: at every subdivision step the point head sees the *original* coarse
    logits (and the fine features), never the already refined map."""
    torch.manual_seed(0)
    net = B.BilateralAttentionNet(size="small", num_classes=2).eval()
    seen, coarse = [], {}
    net.coarse_head.register_forward_hook(lambda m, i, o: coarse.setdefault("t", o))
    real = B.point_sample

    def spy(features, coords):
        seen.append(features)
        return real(features, coords)

    monkeypatch.setattr(B, "point_sample", spy)
    with torch.no_grad():
        out = net(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 2, 64, 64)
    sampled_maps = [t for t in seen if t.shape[1] == 2]  # the 2-class maps handed to point_sample
    assert len(sampled_maps) == net.subdivision_steps
    assert all(t is coarse["t"] for t in sampled_maps)


def test_bilateral_training_points_are_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    net = B.BilateralAttentionNet(size="small", num_classes=2, train_points=2048).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.rand(2, 3, 64, 64))
    coords = out["point_coords"]
    assert coords.dtype == torch.float32
    # bf16 has 256 values in [0.5, 1) and fewer below: fp32 draws are (almost) all distinct
    assert len(torch.unique(coords[0, :, 0])) > 2000


def test_bottleneck_keeps_four_channels_per_group():
    """The grouped 3x3 keeps ResNeXt's 4 channels per group and the paper's cardinality 8 where the
    width allows (small: 1, 2, 4, 8, 8 groups); group_width=None is the first design (8 groups of 1)."""
    widths = B.SIZES["small"]["widths"]
    assert [B.bottleneck_shape(w) for w in widths] == [(4, 1), (8, 2), (16, 4), (32, 8), (32, 8)]
    assert [B.bottleneck_shape(w) for w in B.SIZES["paper"]["widths"]] == [(12, 3), (24, 6), (48, 8), (96, 8), (96, 8)]
    assert B.bottleneck_shape(8, None) == (8, 8)
    net = B.BilateralAttentionNet(size="small")
    convs = [m for m in net.encoder.modules() if isinstance(m, nn.Conv2d) and m.groups > 1 or
             isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs and all(c.in_channels // c.groups >= 4 for c in convs)
    old = B.BilateralAttentionNet(size="small", group_width=None, decoder="stride4")
    assert {m.in_channels // m.groups for m in old.encoder.modules() if isinstance(m, nn.Conv2d) and m.groups > 1} == {1, 2, 4}
    with pytest.raises(ValueError, match="group_width"):
        B.BilateralAttentionNet(size="small", group_width=0)


def test_u_shaped_decoder_reads_every_scale():
    """decoder="full": the last decoder level concatenates the full-resolution features f0 (and the one
    before it f1) and the dense logits come out at the input size; decoder="stride4" has no such level."""
    torch.manual_seed(0)
    net = B.BilateralAttentionNet(size="small", render=False).eval()
    seen = {}

    def keep(name, inputs=False):
        def hook(module, i, o):
            seen[name] = i if inputs else o  # returns None: the output is left as it is
        return hook

    net.encoder[0].register_forward_hook(keep("f0"))
    net.encoder[1].register_forward_hook(keep("f1"))
    net.up0.register_forward_hook(keep("up0", inputs=True))
    net.up1.register_forward_hook(keep("up1", inputs=True))
    with torch.no_grad():
        out = net(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 1, 64, 64)
    assert seen["up0"][1] is seen["f0"] and seen["up1"][1] is seen["f1"]
    old = B.BilateralAttentionNet(size="small", decoder="stride4", render=False)
    assert not hasattr(old, "up0") and old.coarse_head.in_channels == B.SIZES["small"]["widths"][2]
    with pytest.raises(ValueError, match="decoder must be one of"):
        B.BilateralAttentionNet(size="small", decoder="stride2")


def test_zero_init_residual_makes_every_block_start_as_its_shortcut():
    net = B.BilateralAttentionNet(size="small")
    blocks = [m for m in net.modules() if isinstance(m, B.ResNeXtBlock)]
    assert len(blocks) == 18
    assert all(float(b.body[-1].weight.detach().abs().max()) == 0.0 for b in blocks)
    plain = B.BilateralAttentionNet(size="small", residual="plain")
    assert all(float(b.body[-1].weight.detach().abs().min()) == 1.0 for b in plain.modules() if isinstance(b, B.ResNeXtBlock))


def test_preact_residual_blocks_are_identity_mappings():
    """residual="preact": 18 pre-activation units (He et al. 2016), nothing after the addition, so a
    unit whose branch is silenced passes its input through unchanged; each stage ends with BN-ReLU and
    the stage's first unit reads that normalised input without a pre-activation of its own."""
    torch.manual_seed(0)
    net = B.BilateralAttentionNet(size="small", residual="preact").eval()
    stages = list(net.encoder)
    units = [m for m in net.modules() if isinstance(m, B.PreActResNeXtBlock)]
    assert len(units) == 18 and not any(isinstance(m, B.ResNeXtBlock) for m in net.modules())
    for stage in stages:
        assert isinstance(stage[-2], nn.BatchNorm2d) and isinstance(stage[-1], nn.ReLU)
        assert isinstance(stage[0].body[0], nn.Conv2d)  # first unit: no pre-activation
        assert all(isinstance(u.body[0], nn.BatchNorm2d) for u in stage[1:-2])
    unit = stages[1][1]
    nn.init.zeros_(unit.body[-1].weight)
    x = torch.randn(2, 16, 8, 8) - 1.0  # negative values would not survive a ReLU after the addition
    assert torch.equal(unit(x), x)
    with pytest.raises(ValueError, match="residual must be one of"):
        B.BilateralAttentionNet(size="small", residual="fixup")


def _swin_t_state() -> dict[str, torch.Tensor]:
    """Random tensors with the key names and shapes of an ImageNet Swin-T checkpoint (window 7)."""
    g = torch.Generator().manual_seed(0)
    state = {"patch_embed.proj.weight": torch.randn(96, 3, 4, 4, generator=g), "norm.weight": torch.ones(768),
             "head.weight": torch.randn(1000, 768, generator=g)}
    for s, (dim, depth, heads) in enumerate(zip((96, 192, 384, 768), (2, 2, 6, 2), (3, 6, 12, 24))):
        for b in range(depth):
            p = f"layers.{s}.blocks.{b}."
            shapes = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.relative_position_bias_table": (169, heads),
                      "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,), "attn.proj.weight": (dim, dim),
                      "attn.proj.bias": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,),
                      "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,), "mlp.fc2.weight": (dim, 4 * dim),
                      "mlp.fc2.bias": (dim,)}
            for k, shape in shapes.items():
                state[p + k] = torch.randn(*shape, generator=g)
            state[p + "attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
        if s < 3:
            state[f"layers.{s}.downsample.reduction.weight"] = torch.randn(2 * dim, 4 * dim, generator=g)
    return state


def test_swin_t_imagenet_file_loads_into_the_paper_isam(tmp_path):
    from safetensors.torch import save_file

    src = _swin_t_state()
    save_file(src, str(tmp_path / "swin_tiny_patch4_window7_224.safetensors"))
    net = B.BilateralAttentionNet(size="paper")
    info = net.load_swin_weights(tmp_path / "swin_tiny_patch4_window7_224.safetensors")
    assert info["stage"] == 1 and info["source_blocks"] == [0, 1, 0, 1, 0, 1]  # width 192, 2 blocks repeated
    blocks = net.isam.swin.blocks
    assert info["loaded"] == 6 * 13  # every learnable tensor of the six blocks (norms, table, qkv, proj, mlp)
    for ours, theirs in enumerate(info["source_blocks"]):
        p = f"layers.1.blocks.{theirs}."
        torch.testing.assert_close(blocks[ours].attn.qkv.weight, src[p + "attn.qkv.weight"], rtol=0, atol=0)
        torch.testing.assert_close(blocks[ours].mlp.linear1.weight, src[p + "mlp.fc1.weight"], rtol=0, atol=0)
        torch.testing.assert_close(blocks[ours].mlp.linear2.bias, src[p + "mlp.fc2.bias"], rtol=0, atol=0)
        table = blocks[ours].attn.relative_position_bias_table
        assert table.shape == (225, 6)  # window 8
        torch.testing.assert_close(table, B.resize_bias_table(src[p + "attn.relative_position_bias_table"], 8))
    with torch.no_grad():
        assert torch.isfinite(net.eval()(torch.rand(1, 3, 256, 256))).all()


def test_bias_table_resize_keeps_a_constant_table_and_refuses_odd_shapes():
    out = B.resize_bias_table(torch.full((169, 3), 0.25), 8)
    assert out.shape == (225, 3)
    torch.testing.assert_close(out, torch.full((225, 3), 0.25))
    with pytest.raises(ValueError, match="not square"):
        B.resize_bias_table(torch.zeros(170, 3), 8)


def test_swin_file_of_the_wrong_width_or_incomplete_is_refused(tmp_path):
    from safetensors.torch import save_file

    src = _swin_t_state()
    save_file(src, str(tmp_path / "swin.safetensors"))
    small = B.BilateralAttentionNet(size="small")  # ISAM width 64: no Swin-T stage has it
    before = {k: v.clone() for k, v in small.isam.swin.state_dict().items()}
    with pytest.raises(ValueError, match="no Swin stage has width 64"):
        small.load_swin_weights(tmp_path / "swin.safetensors")
    del src["layers.1.blocks.1.mlp.fc2.weight"]
    save_file(src, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="mlp.linear2.weight is missing"):
        B.BilateralAttentionNet(size="paper").load_swin_weights(tmp_path / "partial.safetensors")
    for k, v in small.isam.swin.state_dict().items():  # nothing was half-loaded
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


# ---------------------------------------------------------------- BCDU-Net


def test_bcdunet_drops_elements_and_only_the_third_skip():
    torch.manual_seed(0)
    net = BCDUNet(size="small")
    assert not any(isinstance(m, nn.Dropout2d) for m in net.modules())
    assert sum(isinstance(m, nn.Dropout) for m in net.modules()) == 2  # e3's skip; one module reused in the bottleneck
    seen = []
    net.bottleneck.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    x = torch.rand(1, 3, 64, 64)
    net.train()(x)
    net.eval()(x)
    # the reference pools the un-dropped e3: the bottleneck input is the same with and without dropout
    torch.testing.assert_close(seen[0], seen[1])


def test_bcdunet_reference_initialisation():
    torch.manual_seed(0)
    net = BCDUNet(size="paper")
    conv = net.bottleneck.d3[0]  # 3x3 conv, 1024 -> 512 channels: 4.7 M weights
    fan_in = conv.weight.shape[1] * 9
    assert float(conv.weight.detach().std()) == pytest.approx((2 / fan_in) ** 0.5, rel=0.01)
    assert float(conv.weight.detach().abs().max()) <= 2 * (2 / fan_in) ** 0.5 / 0.8796 + 1e-6  # truncated at 2 std
    assert float(conv.bias.detach().abs().max()) == 0.0
    cell = net.up3.lstm.cell
    hc = cell.hidden_channels
    assert torch.all(cell.gates.bias[hc: 2 * hc] == 1) and torch.all(cell.gates.bias[:hc] == 0)


def test_zscore_minmax_input_is_recorded_and_used_by_inference(tiny, tmp_path):
    from napari_medseg import io
    from napari_medseg.engine.infer import Predictor

    layout = D.discover(tiny["kvasir-seg"])
    stem = D.split(layout)["train"][0]
    image = io.read_image2d(layout.pairs[stem][0]).data
    x = pp.normalize(pp.to_channels(image, 3, True), "zscore+minmax")
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0, abs=1e-6)
    res = train(train_opts("bcdunet", tiny["kvasir-seg"], tmp_path / "run"))
    cfg = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert cfg["preprocessing"]["normalize"] == "zscore+minmax"
    assert cfg["training"]["loss"] == "bce" and cfg["training"]["loss_used"] == "bce"
    assert cfg["training"]["memory_format"] == "channels_last"  # bcdunet small: the measured choice
    pred = Predictor.from_checkpoint(res["last_checkpoint"], device="cpu", precision="fp32", runtime="torch")
    seen = []
    pred.model.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    pred.segment_image(image)
    expected = pp.resize(x, pred.size, "area")[None]
    torch.testing.assert_close(seen[0], expected)


# ---------------------------------------------------------------- losses and recipes


def test_bce_on_the_logit_difference_is_two_class_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    target = torch.randint(0, 2, (3, 8, 8))
    torch.testing.assert_close(binary_ce(logits, target), F.cross_entropy(logits, target))
    with pytest.raises(ValueError, match="binary segmentation"):
        binary_ce(torch.randn(1, 4, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="'dice_ce' is the segmentation loss: disc labeling trains with heatmap_mse"):
        tasks.KEYPOINTS.criterion("dice_ce")
    with pytest.raises(ValueError, match="'heatmap_mse' is the disc labeling loss: segmentation trains with dice_ce"):
        tasks.SEGMENTATION.criterion("heatmap_mse")
    with pytest.raises(ValueError, match="unknown segmentation loss 'focal'"):
        tasks.of("segmentation").criterion("focal")


def test_recipes_set_the_defaults_and_options_override_them():
    bcdu = resolve(TrainOptions(model="bcdunet", out="x"))
    assert (bcdu["loss"], bcdu["epochs"], bcdu["schedule"], bcdu["lr"], bcdu["batch_size"]) == \
        ("bce", 100, "plateau0.1p7", 1e-4, 8)
    bil = resolve(TrainOptions(model="bilateral", out="x"))
    assert (bil["loss"], bil["augment"], bil["epochs"]) == ("dice_ce", False, 50)  # the paper: no augmentation
    assert resolve(TrainOptions(model="bilateral", out="x", augment=True))["augment"] is True
    assert resolve(TrainOptions(model="unet", out="x", recipe="bcdunet"))["loss"] == "bce"
    assert resolve(TrainOptions(model="unet", out="x", recipe="bcdunet", loss="ce"))["loss"] == "ce"
    assert resolve(TrainOptions(model="hourglass", out="x"))["loss"] == "heatmap_mse"
    assert resolve(TrainOptions(model="unet", out="x", recipe="hourglass"))["loss"] == "dice_ce"


@pytest.mark.parametrize("loss", ["ce", "bce", "dice_ce"])
def test_the_trainer_uses_the_loss_it_records(tiny, tmp_path, loss):
    """Same seed, data and steps: the first recorded train loss is the chosen loss of the initial model."""
    res = train(train_opts("unet", tiny["kvasir-seg"], tmp_path / loss, loss=loss, augment=False, max_steps_per_epoch=1))
    cfg = json.loads((tmp_path / loss / "last" / "config.json").read_text())
    assert cfg["training"]["loss"] == loss and cfg["training"]["augment"] is False
    assert cfg["training"]["batch_size"] == 2 and cfg["training"]["epochs"] == 1
    torch.manual_seed(1)
    net = models.build("unet", "small", in_channels=3, num_classes=2)
    from napari_medseg.engine.train import prepare_data

    tr, _, _ = prepare_data(train_opts("unet", tiny["kvasir-seg"], tmp_path / "x"), (64, 64))
    ds = D.SegmentationSamples(tr, augment=False, seed=1)
    sampler = torch.utils.data.distributed.DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=1)
    sampler.set_epoch(0)  # the trainer's sampling rule (the same for 1 and N processes)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, drop_last=True)))
    torch.manual_seed(1 * 100_003)
    expected = float(tasks.SEGMENTATION.criterion(loss)(net.train()(batch["image"]), batch["target"]).detach())
    assert res["history"][0]["train_loss"] == pytest.approx(expected, rel=1e-5)


def test_lstmsa_backbone_only_ablation_has_no_recurrent_head():
    torch.manual_seed(0)
    net = models.build("lstmsa", "small", in_channels=1, num_classes=4, cell="none")
    assert net.head_parameters() == 20 * 4 + 4  # a 1x1 conv on the backbone's 20 channels
    x = torch.rand(2, 3, 1, 32, 32)
    out = net.eval()(x)
    assert out.shape == (2, 4, 32, 32)
    # only the middle slice is used
    y = x.clone()
    y[:, 0] = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(net(y), out)


def test_a_disc_model_refuses_to_segment_and_points_to_label_discs(tmp_path, capsys):
    from PIL import Image

    from napari_medseg.cli import main
    from napari_medseg.engine.infer import Predictor

    img = np.zeros((64, 64), np.uint8)
    img[20:40, 20:40] = 200
    Image.fromarray(img).save(tmp_path / "frame.png")
    assert main(["predict", "--model", "hourglass-spine-discs", str(tmp_path / "frame.png"), "--out",
                 str(tmp_path / "out")]) == 2
    assert "use label-discs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
    from napari_medseg import api

    pred = Predictor.from_checkpoint(api.bundled_weights()["hourglass-spine-discs"], device="cpu")
    with pytest.raises(ValueError, match="use label-discs"):
        pred.segment_image(img)


def test_plateau_schedule_watches_the_validation_loss(tiny, tmp_path):
    """BCDU-Net's schedule: x0.1 after 7 epochs without a 1e-4 improvement of the validation loss."""
    from napari_medseg.engine.train import build_scheduler

    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    sched = build_scheduler(opt, models.REGISTRY["bcdunet"].recipe, 100, "plateau0.1p7")
    for loss in [1.0] + [0.99995] * 6:  # improvements below 1e-4 do not count
        sched.step(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)  # 6 bad epochs: not yet
    sched.step(0.99995)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)  # the 7th (Keras' patience=7)
    res = train(train_opts("bcdunet", tiny["kvasir-seg"], tmp_path / "run", epochs=2, max_steps_per_epoch=1))
    assert all("val_loss" in h and h["val_loss"] > 0 for h in res["history"])


def test_cosine_schedule_from_the_rate_to_one_percent(tiny, tmp_path):
    """--schedule cosine: lr_e = lr_min + (lr - lr_min) (1 + cos(pi e / E)) / 2 with lr_min = lr / 100,
    stepped per epoch, whatever the recipe's own schedule; recorded in the run's config."""
    import math

    from napari_medseg.engine.train import build_scheduler

    opt = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    sched = build_scheduler(opt, models.REGISTRY["unet"].recipe, 10, "cosine")
    for e in range(1, 11):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * e / 10)) / 2)
    res = train(train_opts("unet", tiny["kvasir-seg"], tmp_path / "run", epochs=2, max_steps_per_epoch=1,
                           schedule="cosine", lr=1e-3))
    assert [h["lr"] for h in res["history"]] == pytest.approx([1e-3, 1e-5 + (1e-3 - 1e-5) / 2])
    from napari_medseg.engine.config import read_config

    assert read_config(tmp_path / "run" / "last")["training"]["schedule"] == "cosine"
    with pytest.raises(ValueError, match="unknown schedule"):
        train(train_opts("unet", tiny["kvasir-seg"], tmp_path / "run2", epochs=1, schedule="warm"))
    with pytest.raises(ValueError, match="no milestones"):
        train(train_opts("unet", tiny["kvasir-seg"], tmp_path / "run3", epochs=1, schedule="milestones"))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_trainer_trains_in_the_chosen_memory_format(layout, tiny, tmp_path, monkeypatch):
    """The layout the trainer records is the one the network's convolutions really see."""
    from napari_medseg.engine import train as T

    seen = []
    real_step = T.train_step

    def spy(net, **kw):
        handle = net.register_forward_pre_hook(lambda m, a: seen.append(
            (a[0].is_contiguous(), a[0].is_contiguous(memory_format=torch.channels_last),
             next(net.parameters()).is_contiguous())))
        try:
            return real_step(net, **kw)
        finally:
            handle.remove()

    monkeypatch.setattr(T, "train_step", spy)
    train(train_opts("unet", tiny["kvasir-seg"], tmp_path / "run", memory_format=layout))
    cfg = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert cfg["training"]["memory_format"] == layout and cfg["training"]["channels_last"] == (layout == "channels_last")
    assert len(seen) == 2
    if layout == "contiguous":
        assert all(c and w for c, _, w in seen)
    else:
        assert all(cl and not c for c, cl, _ in seen)
