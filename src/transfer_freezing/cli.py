"""The ``tfreeze`` command: one subcommand per DVC stage, each a thin call into the package."""

from __future__ import annotations

import argparse
import errno
import gc
import os
import signal
import sys
from collections.abc import Callable

from . import config
from .errors import Terminated, UserError


def cmd_data(p: config.Params, args: argparse.Namespace) -> None:
    from .data import corpus as data

    data.materialise(p)


def cmd_features(p: config.Params, args: argparse.Namespace) -> None:
    from .data import features

    meta = features.build(p)
    shapes = ", ".join(f"{k} {v['shape']}" for k, v in meta["splits"].items())
    print(f"features written to {p['features']['out']}: {shapes} ({meta['dtype']})")


def cmd_pretrain(p: config.Params, args: argparse.Namespace) -> None:
    from .train import pretrain

    pretrain.run(p)


def cmd_train(p: config.Params, args: argparse.Namespace) -> None:
    from .grid import select

    cells = select(p, args.model, args.freeze, args.cell, args.seed, args.fold, args.lr_source, args.recipe)
    if args.address or ((args.jobs or 1) > 1 and len(cells) > 1):
        from .train import executor

        executor.train_cells(p, cells, args.params, args.overrides, args.jobs, _ray_address(args))
        return
    from .train import stage as train_stage

    for model, freeze, seed, fold, recipe in cells:
        train_stage.train(p, model, freeze, seed, fold, recipe)


def cmd_sweep(p: config.Params, args: argparse.Namespace) -> None:
    if args.seed is not None:
        raise UserError(f"tfreeze sweep --seed {args.seed}: a trial trains every seed of sweep.seeds; "
                        f"set them with --set 'sweep.seeds=[{args.seed}, ...]'")
    models = [args.model] if args.model else p["grid"]["tuned_models"]
    modes = [args.freeze] if args.freeze else p["grid"]["tuned_freeze_modes"]
    if args.recipe and not config.is_tuned(p, args.recipe):  # unknown recipe -> one line too
        raise UserError(f"tfreeze sweep --recipe {args.recipe}: its lr is "
                        f"{config.recipe(p, args.recipe)['lr']!r}; a sweep tunes a recipe with lr: tuned")
    recipes = [args.recipe] if args.recipe else p["grid"]["tuned_recipes"]
    studies = [(model, freeze, recipe) for model in models for freeze in modes for recipe in recipes]
    if args.address or args.workers > 1:
        from .train import executor

        executor.sweep_workers(p, studies, args.params, args.overrides, args.workers, _ray_address(args))
        return
    from .train import sweep

    workers = None
    if args.shared:
        from .train import sweep_workers as workers
    for model, freeze, recipe in studies:
        sweep.run_study(p, model, freeze, recipe, workers)


def _ray_address(args: argparse.Namespace) -> str | None:
    """--address, else RAY_ADDRESS (only read when Ray is used: --jobs/--workers > 1 or --address)."""
    return args.address or os.environ.get("RAY_ADDRESS") or None


def cmd_recipes(p: config.Params, args: argparse.Namespace) -> None:
    from . import recipes

    for path in recipes.write(p):
        print(f"recipe written to {path}")


def cmd_compare(p: config.Params, args: argparse.Namespace) -> None:
    from .study import compare

    if args.plan is not None:
        compare.plan(p, args.plan, args.from_csv)
    elif args.from_csv:
        compare.from_csv(p, args.from_csv, args.out, args.label)
    else:
        compare.from_pipeline(p)


def cmd_status(p: config.Params, args: argparse.Namespace) -> None:
    from .train import status

    print(status.report(p))


def cmd_ui(p: config.Params, args: argparse.Namespace) -> None:
    from .study import ui

    ui.serve(p, host=args.host, port=args.port)


def cmd_models(p: config.Params, args: argparse.Namespace) -> None:
    from .model import catalogue

    if args.layer_decay is not None:
        if not args.model:
            raise UserError("tfreeze models --layer-decay needs --model (one architecture)")
        print(catalogue.describe_groups(args.model, args.layer_decay, args.freeze, args.lr,
                                        num_classes=args.num_classes))
        return
    print(catalogue.describe(args.model, num_classes=args.num_classes, counts=args.describe))


def cmd_profile(p: None, args: argparse.Namespace) -> None:
    from . import profiles

    text = profiles.write(args.name, args.params, args.overrides)
    if args.params == "-":
        print(text, end="")
    else:
        print(f"{args.params} written from profile {args.name}")


def _common(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a params key, e.g. --set train.epochs=2 (repeatable)")
    sub.add_argument("--debug", action="store_true", help="show tracebacks")


def _cell(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--model", help="one model (default: the params grid)")
    sub.add_argument("--freeze", help="one freeze mode (default: the params grid)")
    sub.add_argument("--seed", type=int, help="one seed (default: the params grid)")


COMMANDS: dict[str, tuple[Callable, str]] = {
    "data": (cmd_data, "materialise raw audio under data/raw/ (synthetic, gtzan or folder)"),
    "features": (cmd_features, "split the corpus and compute log-mel spectrogram arrays"),
    "pretrain": (cmd_pretrain, "pretrain the demo models on formula-driven fractals (a source task)"),
    "recipes": (cmd_recipes, "write each grid recipe, resolved over train, for the train and sweep stages"),
    "train": (cmd_train, "train (model, freeze mode, seed, fold, recipe) cells, tracked in MLflow"),
    "sweep": (cmd_sweep, "Optuna learning-rate sweep per (model, freeze mode, tuned-lr recipe)"),
    "compare": (cmd_compare, "freezing comparison table, statistics and figure from MLflow"),
    "status": (cmd_status, "every train cell: done, resumable, failed, running or missing"),
    "ui": (cmd_ui, "serve the MLflow UI on 127.0.0.1 and print the study's runs link"),
    "models": (cmd_models, "list architectures and freeze modes with trainable shares"),
    "profile": (cmd_profile, "write the full params file (--params, default params.yaml; - for stdout) "
                             "from profiles/NAME.yaml over the schema defaults"),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="tfreeze",
        description="Freezing ImageNet-pretrained ViT/ResNet prefixes for GTZAN genre transfer: "
                    "one subcommand per DVC stage (see dvc.yaml).",
    )
    subs = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        _common(sub)
        if name in ("train", "sweep"):
            _cell(sub)
            sub.add_argument("--recipe", metavar="NAME",
                             help="one recipe of params' recipes (default: the grid's; see --lr-source)"
                             if name == "train" else "one tuned-lr recipe (default: grid.tuned_recipes)")
    subs.choices["train"].add_argument("--fold", type=int, help="one fold cell (default: grid.folds)")
    subs.choices["train"].add_argument(
        "--cell", metavar="MODEL/MODE", help="one (model, freeze mode) pair, as grid.cells lists them")
    subs.choices["train"].add_argument(
        "--lr-source", choices=("fixed", "tuned"),
        help="the cells of fixed-lr recipes (grid.recipes) or tuned-lr ones (grid.tuned_recipes: the "
             "sweep's best lr); default: both grids, or fixed when --model/--freeze/--cell pick cells")
    subs.choices["train"].add_argument(
        "--jobs", type=int, metavar="N",
        help="run N cells at once as Ray tasks (embedded Ray on this machine unless --address; "
             "default 1, with --address as many as the cluster fits)")
    subs.choices["sweep"].add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="run N Optuna workers per study at once as Ray tasks, sharing its storage (default 1)")
    subs.choices["sweep"].add_argument(
        "--shared", action="store_true",
        help="other processes work on the same study at once (e.g. on other machines against one "
             "PostgreSQL storage): keep the trial total exact among them (--workers implies it)")
    for name in ("train", "sweep"):
        subs.choices[name].add_argument(
            "--address", metavar="HOST:PORT",
            help="run on the Ray cluster at this address (default with --jobs/--workers > 1: "
                 "RAY_ADDRESS, else an embedded instance on this machine)")
    compare = subs.choices["compare"]
    compare.add_argument("--from-csv", nargs="+", metavar="CSV",
                         help="summarise per-seed CSVs (the original study's format, or "
                              "reports/freezing_runs.csv of fixed- and tuned-lr studies together)")
    compare.add_argument("--out", help="output folder for --from-csv (default: compare.out)")
    compare.add_argument("--label", action="append", metavar="CONDITION",
                         help="the training condition of each --from-csv CSV, in order (repeat once per "
                              "CSV; default: 'augmented' for models named *_aug, else 'plain')")
    compare.add_argument("--plan", type=float, metavar="EFFECT",
                         help="how many runs (seeds x folds x repeats) would detect EFFECT pp, from the "
                              "variance this study measured (or the --from-csv table)")
    subs.choices["profile"].add_argument(
        "name", help="a profile under profiles/ (demo, paper, decisive, depth, depth_demo, optimizer, "
                     "optimizer_demo, peft, peft_demo, pretraining) or a YAML file")
    ui = subs.choices["ui"]
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1 only)")
    ui.add_argument("--port", type=int, default=5000)
    models = subs.choices["models"]
    models.add_argument("--model", help="only this model")
    models.add_argument("--describe", action="store_true",
                        help="build each model and count trainable parameters per mode")
    models.add_argument("--num-classes", type=int, default=10)
    models.add_argument("--layer-decay", type=float, default=None,
                        help="list the optimiser's parameter groups and lr under this train.layer_decay")
    models.add_argument("--freeze", default="freeze_none", help="with --layer-decay: the freeze mode")
    models.add_argument("--lr", type=float, default=1.0, help="with --layer-decay: the base lr (default 1)")
    return top


def _error(command: str, message: str) -> None:
    """The one stderr line of a user error (a stray newline in a message would make it two)."""
    print(f"tfreeze {command}: error: {' '.join(message.split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started as a background job of a shell without job control, which ignores SIGINT for it
        # (and Python keeps that): a grid's Ctrl-C / SIGINT must still stop it (docs/operations.md).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # `models` describes the registries and works without a params file; `profile` writes one.
        needs_params = args.command != "profile" and (args.command != "models" or args.overrides)
        p = config.load(args.params, args.overrides) if needs_params else None
        COMMANDS[args.command][0](p, args)
    except UserError as err:
        if args.debug:
            raise
        _error(args.command, str(err))
        return 2
    except OSError as err:
        if args.debug or err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" while writing {err.filename}" if err.filename else ""
        _error(args.command, f"disk full{where}: free space and re-run ({err.strerror})")
        return 2
    except Terminated:
        print(f"tfreeze {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"tfreeze {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def run() -> None:
    """The console command: ``main``, then exit. ``gc.freeze()`` first: the interpreter's last
    garbage collections over the ~640,000 objects torch, torchvision and MLflow leave cost a train
    stage 2.3 s after its work is done (measured: 13.6 s -> 11.1 s per demo cell); frozen objects
    are left to the process's end. Every atexit handler (MLflow ending its run) still runs."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
