"""Where the bilateral network's gap to the U-Net is not: two measurements on a trained checkpoint.

1. The attention rendering module on and off: test Dice and the fit of the first 150 training images with
   the point head re-predicting the uncertain pixels (as shipped) and with the decoder's logits alone.
2. Spatial capacity per resolution: the 3x3 convolution weights that act at each feature-map size, for the
   bilateral network and the U-Net baseline at the same size (``small``), at the run's input size. The
   1x1 convolutions, the Swin blocks and the point head are left out: they mix channels, not neighbours.

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/bilateral_anatomy.py \\
        ../runs/bilateral-kvasir-192-ushape-constant ../shared/data/kvasir-seg

Writes benchmarks/results/bilateral_anatomy.json and prints both tables (docs/results.md quotes them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from napari_medseg import api, models
from napari_medseg.engine.evaluate import evaluate

try:
    from _report import print_table, save_json
except ImportError:  # run as a module
    from benchmarks._report import print_table, save_json

ROOT = Path(__file__).resolve().parents[1]


def rendering(run: Path, data: str, which: str = "best", fit_cases: int = 150) -> list[dict]:
    """Test Dice and train fit of ``run/which`` with the rendering module on and off (fp32, eager)."""
    pred = api.load(None, str(run / which), device="cpu", precision="fp32", runtime="torch")
    rows = []
    for render in (True, False):
        pred.model.render = render
        test = evaluate(pred, data, subset="test")["mean"]["dice"]
        fit = evaluate(pred, data, subset="train", max_cases=fit_cases)["mean"]["dice"]
        rows.append({"rendering": "on (as shipped)" if render else "off (decoder logits)",
                     "test Dice": round(test, 4), f"train fit ({fit_cases})": round(fit, 4)})
    return rows


def spatial_capacity(size: int, in_channels: int = 3, num_classes: int = 2) -> list[dict]:
    """3x3 convolution weights per output resolution, bilateral vs U-Net (``small``)."""
    per = {}
    for name in ("bilateral", "unet"):
        net = models.build(name, "small", in_channels=in_channels, num_classes=num_classes).eval()
        found: dict[int, list[int]] = {}

        def hook(module, _inputs, output, found=found):
            found.setdefault(int(output.shape[-1]), []).append(module.weight.numel())

        handles = [m.register_forward_hook(hook) for m in net.modules()
                   if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        with torch.no_grad():
            net(torch.zeros(1, in_channels, size, size))
        for h in handles:
            h.remove()
        per[name] = found
    sizes = sorted(set(per["bilateral"]) | set(per["unet"]), reverse=True)
    return [{"feature map": f"{s}x{s}", "stride": size // s,
             "bilateral 3x3 weights (convs)": f"{sum(per['bilateral'].get(s, []))} ({len(per['bilateral'].get(s, []))})",
             "U-Net 3x3 weights (convs)": f"{sum(per['unet'].get(s, []))} ({len(per['unet'].get(s, []))})"}
            for s in sizes]


def main() -> int:
    run, data = Path(sys.argv[1]), sys.argv[2]
    size = int(api.load(None, str(run / "best"), device="cpu", runtime="torch").size[0])
    out = {"run": str(run), "rendering": rendering(run, data), "spatial_capacity": spatial_capacity(size)}
    for rows in (out["rendering"], out["spatial_capacity"]):
        print_table(list(rows[0]), [list(r.values()) for r in rows])
    save_json(ROOT / "benchmarks" / "results" / "bilateral_anatomy.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
