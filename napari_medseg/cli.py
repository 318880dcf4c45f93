"""``napari-medseg`` command line: a thin shell over :mod:`napari_medseg.api`.

Every command has ``--help`` and exits with status 2 and a one-line error on bad input.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .engine import choices
from .io.errors import InvalidInput, USER_ERRORS

EXIT_BAD_INPUT, EXIT_CANCELLED = 2, 130


def _importable(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (a module set to None counts as missing)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _cmd_demo(args) -> int:
    # the one command that opens napari: the GUI layer is imported only when it runs
    missing = [m for m in ("napari", "magicgui", "qtpy") if _importable(m) is False]
    if missing:
        print(f"napari-medseg: error: the demo needs napari ({', '.join(missing)} not installed): "
              "pip install 'napari-medseg[pyqt6]' (or 'napari-medseg[napari]' beside your own Qt binding)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    from ._napari.demo import run_demo

    summary = run_demo(args.out, headless=True if args.headless else None)
    if summary.get("samples") or not summary.get("skipped"):
        return 0
    print("napari-medseg: error: no sample could be opened (see the 'skipped' lines above). The samples come "
          "from $NAPARI_MEDSEG_DATA_DIR (a folder laid out like the project's shared/data) or are downloaded "
          "from their public originals; set the variable, or run once with internet access. The documentation's "
          "'Sample data and the cache' page lists which sample needs which.", file=sys.stderr)
    return EXIT_BAD_INPUT


def _metric_text(metrics: dict) -> str:
    """The headline test metric in words: Dice for segmentation, median L2 + FNR/FPR for discs."""
    if "l2_mm" in metrics:
        return f"median L2 {metrics['l2_mm']:.2f} mm, FNR {metrics.get('fnr', float('nan')):.3f}, " \
               f"FPR {metrics.get('fpr', float('nan')):.3f}"
    if "dice" in metrics:
        return f"Dice {metrics['dice']:.3f}" + (f", HD95 {metrics['hd95']:.1f}" if "hd95" in metrics else "")
    return "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _cmd_models(args) -> int:
    from .catalog import list_models  # no torch: answers fast

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(_table(["network", "task", "parameters small / paper", "loss", "training precision"],
                 [[r["name"], r["task"], f"{r['parameters']['small'] / 1e6:.2f} M / {r['parameters']['paper'] / 1e6:.2f} M",
                   r["loss"], r["precision"]] for r in rows if not r["weights"]]))
    print()
    print(_table(["bundled weights", "what it does", "trained on", "test split", "size", "trained in", "loss"],
                 [[r["name"], r["task_in_words"], r["dataset"] or "-", _metric_text(r["metrics"]),
                   f"{r['bytes'] / 1e6:.1f} MB", r["precision"] or "-", r["loss"] or "-"] for r in rows if r["weights"]]))
    print("\n(napari-medseg models --json for scripts; each model's card: napari_medseg/weights/<name>/config.json)")
    return 0


class _TqdmEvents:
    """Engine events -> tqdm bars (training) and lines (epochs)."""

    def __init__(self):
        self.bar = None
        self._t_epoch = None  # when the current epoch's first step began (the previous event)

    def __call__(self, event):
        import time

        from tqdm import tqdm

        if event.kind in ("started", "epoch"):
            self._t_epoch = time.time()
        if event.kind == "started":
            tqdm.write(f"training on {event.device} ({event.precision}), {event.total_epochs} epochs of "
                       f"{event.steps_per_epoch} steps, starting at epoch {event.start_epoch + 1}")
        elif event.kind == "step":
            if self.bar is None or event.step == 1:
                if self.bar is not None:
                    self.bar.close()
                self.bar = tqdm(total=event.steps_per_epoch, desc=f"epoch {event.epoch}", leave=False)
                if self._t_epoch is not None:  # the first step took time before its event: rate from then
                    self.bar.start_t = self.bar.last_print_t = self._t_epoch
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{event.loss:.4f}", eta=f"{(event.eta_s or 0) / 60:.1f} min")
        elif event.kind == "epoch":
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            metrics = " ".join(f"{k}={v:.4f}" for k, v in event.metrics.items())
            tqdm.write(f"epoch {event.epoch}: loss={event.train_loss:.4f} {metrics}{' (best)' if event.best else ''}")
        elif event.kind == "finished":
            if self.bar is not None:
                self.bar.close()
            tqdm.write(f"finished ({event.reason}) after epoch {event.epoch}; checkpoint: {event.checkpoint}")
        elif event.kind == "progress":
            tqdm.write(f"[{event.done}/{event.total}] {event.item}: {event.status}")
        elif event.kind == "note":
            tqdm.write(event.text)


def _cmd_train(args) -> int:
    from . import api
    from .engine.events import CancelToken

    cancel = CancelToken()

    def on_sigint(signum, frame):
        if cancel.cancelled:
            raise KeyboardInterrupt
        print("\ninterrupt: stopping at the next step and saving a resumable checkpoint (Ctrl-C again to abort)",
              file=sys.stderr)
        cancel.cancel()

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = api.train(args.model, args.data, args.out, **train_options(args), callback=_TqdmEvents(),
                           cancel=cancel)
    finally:
        signal.signal(signal.SIGINT, old)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=1))
    return EXIT_CANCELLED if result["reason"] == "cancelled" else 0


# train flags whose TrainOptions field has another name; every other flag is the field of its own name
TRAIN_FIELDS = {"workers": "num_workers", "max_steps": "max_steps_per_epoch", "options": "model_options"}


def train_options(args) -> dict:
    """Every `train` flag as the TrainOptions field it sets (all of them: a flag that reaches no field is a
    TypeError in TrainOptions, not a silently ignored choice)."""
    opts = {TRAIN_FIELDS.get(k, k): v for k, v in vars(args).items()
            if k not in ("command", "func", "model", "data", "out")}
    opts["model_options"] = _parse_options(opts["model_options"])
    return opts


def _parse_options(items: list[str]) -> dict:
    """``KEY=VALUE`` strings -> a dict; values are read as JSON where they parse (1, 0.5, true), else text."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--option takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class _BatchBar:
    """Batch progress: one bar over all inputs, whichever process or worker finished them."""

    def __init__(self):
        self.bar = None

    def __call__(self, event):
        from tqdm import tqdm

        if event.kind != "progress":
            return
        if self.bar is None:
            self.bar = tqdm(total=event.total, desc="inputs", unit="file")
        self.bar.update(event.done - self.bar.n)
        if not event.status.startswith("ok"):
            # the reason names the file already (MedSegIOError: "path: what"); else say which file
            line = event.status if str(event.item) in event.status else f"{event.item}: {event.status}"
            self.bar.write(line, file=sys.stderr)
        if event.done >= event.total:
            self.bar.close()


def _cmd_predict(args, task=None) -> int:
    from . import api

    client = None
    if args.scheduler:
        from distributed import Client

        client = Client(args.scheduler)
    try:
        summary = api.batch(args.inputs, args.out, model=args.model, weights=args.weights, task=task,
                            tta=getattr(args, "tta", False), cleanup=getattr(args, "cleanup", False),
                            device=args.device, callback=_BatchBar(), force=args.force, resume=args.resume,
                            client=client, workers=args.workers, prior=getattr(args, "prior", None),
                            format=getattr(args, "format", None), overwrite=getattr(args, "overwrite", False),
                            runtime=args.runtime, precision=args.precision)
    finally:
        if client is not None:
            client.close()
    print(f"ran on {summary['device']}: runtime {summary['runtime']}, {summary['precision']}", file=sys.stderr)
    if summary.get("resumed"):
        print(f"{summary['resumed']} input(s) were done by an earlier run (manifest.csv); not redone", file=sys.stderr)
    # each skipped input was said once, as it happened (the progress bar's line); the count is below
    for r in summary["results"]:
        if r.get("verdict", "ok") != "ok":
            where = ", ".join(Path(o).name for o in r.get("outputs", [])) or "its outputs"
            print(f"warning: {r['file']}: {r['verdict']} (each disc's flag is in {where})", file=sys.stderr)
    print(f"wrote {len(summary['written'])} file(s) for {len(summary['results'])} of {summary['n_inputs']} "
          f"input(s); skipped {len(summary['skipped'])}")
    if not summary["results"]:
        return EXIT_BAD_INPUT
    return 0


def _cmd_export(args) -> int:
    from . import api

    done = api.export(args.out, model=args.model, weights=args.weights, format=args.format)
    print(f"wrote {done['file']} (input: batch x {' x '.join(map(str, done['input_shape']))}) and its card {done['card']}")
    return 0


def _cmd_evaluate(args) -> int:
    from . import api

    result = api.evaluate(args.data, model=args.model, weights=args.weights, json_path=args.json, subset=args.subset,
                          max_cases=args.max_cases, tta=args.tta, device=args.device, precision=args.precision,
                          callback=_TqdmEvents(), split=args.split, runtime=args.runtime, fov_crops=args.fov_crops)
    print(f"scored {len(result['cases'])} {args.subset} case(s) from {result['split']}", file=sys.stderr)
    print(json.dumps(result["mean"], indent=1))
    return 0


def _batch_args(p):
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="skip inputs that manifest.csv in --out records as done (same checksum, outputs present)")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the results of an earlier run in --out (otherwise refused without --resume)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="spread the inputs over N local processes (a Dask LocalCluster)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="send the inputs to the workers of a running Dask cluster (tcp://host:8786); --out "
                        "must be a folder the workers can write")


def _weights_args(p, required=True):
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--model", help="name of bundled weights (see `napari-medseg models`)")
    g.add_argument("--weights", help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--device", default="auto", choices=choices.DEVICES)
    p.add_argument("--runtime", default="auto", choices=choices.RUNTIMES,
                   help="inference runtime: torch (eager), onnxruntime (the network exported to ONNX once and "
                        "cached; CPU, fp32) or auto, the network's measured choice on this device (see `models`)")


def _precision_arg(p, default="auto", help="inference precision: auto is bf16 where the CPU (AVX512-BF16/AMX) "
                   "or GPU has it, else fp32; fp32 never rounds to bf16 (and lets auto pick onnxruntime on a CPU)"):
    p.add_argument("--precision", default=default, choices=choices.INFERENCE_PRECISIONS, help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-medseg", description="Medical image segmentation and disc "
                                     "labeling networks: train, predict, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list networks and bundled weights")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="train a network on a dataset folder")
    p.add_argument("--model", required=True, help="lstmsa, bilateral, bcdunet, hourglass or unet")
    p.add_argument("--size", default="small", choices=["small", "paper"])
    p.add_argument("--data", required=True, help="dataset folder (images/+masks/, imagesTr/+labelsTr/, images/+labels/)")
    p.add_argument("--out", required=True, help="run folder: best/ and last/ checkpoints, history.json")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's (BCDU-Net 100, hourglass 120), else 50")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--device", default="auto", choices=choices.DEVICES)
    p.add_argument("--precision", default="auto", choices=choices.PRECISIONS,
                   help="auto: bf16 on CUDA/AVX512-BF16/AMX CPUs, fp16+grad scaling on older GPUs; fp32 turns it off")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without --resume or --overwrite such a folder is refused)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--patience", type=int, default=None, help="early stopping: epochs without improvement")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--memory-format", default="auto", choices=["auto", "channels_last", "contiguous"],
                   help="tensor layout for training (auto: the network's measured choice, see `models`)")
    p.add_argument("--recipe", default=None, help="use another network's training recipe (baselines)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="flips/rotation/intensity augmentation (default: the recipe's; the bilateral paper trains "
                        "without)")
    p.add_argument("--balance-levels", action=argparse.BooleanOptionalAction, default=None,
                   help="disc labeling: draw the cases that label rare levels (L5/S1 ...) more often "
                        "(default: the recipe's, on for the hourglass)")
    p.add_argument("--disc-depth", action=argparse.BooleanOptionalAction, default=None,
                   help="disc labeling: a depth channel per level for each disc's left-right position "
                        "(default: on for volumes of several sagittal slices)")
    p.add_argument("--hu-window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="volumes: clip intensities to [LOW, HIGH] and map them to [0, 1] instead of each volume's "
                        "z-score (CT in Hounsfield units, e.g. -1000 1000); recorded and replayed at inference")
    p.add_argument("--partial-labels", action=argparse.BooleanOptionalAction, default=True,
                   help="volumes whose dataset.json lists the organs drawn per case ('contoured'): leave the undrawn "
                        "ones out of the loss (default), or --no-partial-labels to count them as background")
    p.add_argument("--disc-square-crops", type=float, default=0.0, metavar="SHARE",
                   help="disc labeling: this share (0-1) of the field-of-view crops is a magnified square around the "
                        "spine with the top cut, as scans of a small field of view with more sacrum show it")
    p.add_argument("--disc-extrapolate", action="store_true",
                   help="disc labeling: a target for the unlabelled disc below a case's lowest labelled one (L5/S1 "
                        "where a case stops at L4/L5), placed from its vertebral body masks as the cases that label "
                        "both show")
    p.add_argument("--loss", default=None, choices=choices.LOSSES,
                   help="default: the recipe's (BCDU-Net bce, hourglass heatmap_mse, others dice_ce)")
    p.add_argument("--schedule", default=None,
                   choices=choices.SCHEDULES,
                   help="learning-rate schedule (default: the recipe's); cosine: to 1%% of the rate over the run")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", dest="options",
                   help="a network option (repeatable), e.g. cell=none or cell=convlstm (LSTMSA ablations), "
                        "dense_blocks=1, direction=reverse (BCDU-Net), render=false (bilateral)")
    p.add_argument("--init", default=None, metavar="NAME_OR_CHECKPOINT",
                   help="fine-tune: start from bundled weights (see `models`) or a checkpoint folder of the same "
                        "network and size; another number of classes re-initialises the head. Defaults then: "
                        "learning rate 1e-4 (or the recipe's when lower), 20 epochs")
    p.add_argument("--freeze", default=None, choices=["encoder"], help="keep the encoder fixed while fine-tuning")
    p.add_argument("--extra-train", action="append", default=[], metavar="DIR",
                   help="another dataset folder of the same kind whose train split joins the training set "
                        "(validation and test stay those of --data); repeatable")
    p.add_argument("--max-cases", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="segment images or volumes; writes <stem>_seg.nii.gz / <stem>_seg.png")
    _weights_args(p)
    _precision_arg(p)
    p.add_argument("inputs", nargs="+", help="files, folders or glob patterns")
    p.add_argument("--out", required=True)
    p.add_argument("--tta", action="store_true", help="average over flips")
    p.add_argument("--cleanup", action="store_true", help="keep the largest component of each class")
    p.add_argument("--format", default="nifti", choices=["nifti", "dicom-seg"],
                   help="nifti: <stem>_seg.nii.gz (PNG for 2-D images); dicom-seg: <stem>_seg.dcm, a DICOM SEG "
                        "referencing each input DICOM series (for PACS, OHIF, 3D Slicer)")
    p.add_argument("--force", action="store_true",
                   help="run on inputs unlike the model's training data (otherwise refused and listed as skipped)")
    _batch_args(p)
    p.set_defaults(func=lambda a: _cmd_predict(a, task="segmentation"))

    p = sub.add_parser("label-discs", help="label intervertebral discs; writes _discs.csv/.json/_labels-disc.nii.gz")
    _weights_args(p, required=False)
    _precision_arg(p)
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true",
                   help="run on inputs unlike the model's training data (otherwise refused and listed as skipped)")
    p.add_argument("--prior", default=None, metavar="POINTS_FILE",
                   help="discs you named on this one scan (_discs.csv / .json / disc-label NIfTI; one named disc is "
                        "enough): the nearest prediction takes its name and the rest are renumbered in order")
    p.add_argument("--format", default="files", choices=["files", "dicom-sr"],
                   help="files: _discs.csv, _discs.json and _labels-disc.nii.gz; dicom-sr: <stem>_discs.dcm, a DICOM "
                        "structured report (TID 1500) referencing each input DICOM series")
    _batch_args(p)
    p.set_defaults(func=lambda a: _cmd_predict(_default_disc_model(a), task="keypoints"))

    p = sub.add_parser("evaluate", help="metrics on a dataset's test split (JSON with cases and mean)")
    _weights_args(p)
    p.add_argument("--data", required=True)
    p.add_argument("--json", default=None, help="write the full result here")
    p.add_argument("--subset", default="test", choices=["train", "val", "test", "all"],
                   help="which cases to score (all: every case of the folder)")
    p.add_argument("--split", default="auto", choices=["auto", "run", "folder"],
                   help="auto: the checkpoint's own split when it trained on this folder, else the folder's "
                        "split.json, else a split seeded like the training; run / folder force one")
    p.add_argument("--max-cases", type=int, default=None)
    p.add_argument("--tta", action="store_true")
    p.add_argument("--fov-crops", action="store_true",
                   help="disc datasets: also score each scan without its top and with more sacrum in view "
                        "(a summary per crop, with the flags' precision and recall)")
    _precision_arg(p, "fp32", "inference precision (default fp32, as api.evaluate: the numbers match on any CPU)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("export", help="write a model as ONNX or TorchScript, with its card beside it")
    _weights_args(p)
    p.add_argument("out", help="the file to write (e.g. unet.onnx); the card goes to <out>.json")
    p.add_argument("--format", default="onnx", choices=choices.EXPORT_FORMATS)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("demo", help="open the shipped sample data in napari (or headless: screenshots + summary)")
    p.add_argument("--headless", action="store_true", help="no window: write screenshots and a summary to --out")
    p.add_argument("--out", default="out/demo", help="output folder for --headless (default: out/demo)")
    p.set_defaults(func=_cmd_demo)
    return parser


def _default_disc_model(args):
    if args.model is None and args.weights is None:
        from . import api

        from .engine.config import read_config

        from .engine import tasks

        discs = [n for n, p in api.bundled_weights().items()
                 if tasks.of(read_config(p)["model"].get("task")) is tasks.KEYPOINTS]
        if not discs:
            raise InvalidInput("no bundled disc-labeling weights yet; pass --weights <checkpoint folder>")
        args.model = discs[0]
    return args


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    # bad input and refusals: one line and exit 2; anything else is a bug and shows its traceback
    except USER_ERRORS as err:
        msg = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        print(f"napari-medseg: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
