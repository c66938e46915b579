"""The command line: one table of verbs -> functions. Any recipe key can be overridden with a
dotted flag, e.g. `tunesmith run recipes/quickstart.yaml --train.lr 1e-4 --output.dir runs/x`.

Exit codes: 0 ok, 1 failure a user can fix (message, no traceback), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UsageError, UserError


def _split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separate dotted recipe overrides from the verb's own arguments.

    ['run', 'r.yaml', '--train.lr', '1e-4', '--output.dir=x'] -> (['run', 'r.yaml'],
    {'train.lr': '1e-4', 'output.dir': 'x'}). Done before argparse so an override's value can
    never be taken for a positional argument.
    """
    rest: list[str] = []
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0]
        if arg.startswith("--") and "." in name:
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
            else:
                raise UsageError(f"override {arg} needs a value")
            out[name] = value
        else:
            rest.append(arg)
        i += 1
    return rest, out


def cmd_run(args, overrides) -> int:
    from .pipeline import run
    from .recipe import load_recipe

    run(load_recipe(args.recipe, overrides), resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_train(args, overrides) -> int:
    from .pipeline import run
    from .recipe import load_recipe

    run(load_recipe(args.recipe, overrides), resume=args.resume, do_eval=False, overwrite=args.overwrite)
    return 0


def cmd_data_check(args, overrides) -> int:
    from . import ui
    from .data.prepare import prepare_data, print_data_report
    from .models import load_tokenizer
    from .recipe import load_recipe

    if args.data:
        overrides = {**overrides, "data.train": args.data}
    recipe = load_recipe(args.recipe, overrides)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(recipe.model.name, log=ui.log)
    data = prepare_data(recipe, tokenizer, out)
    print_data_report(data.report)
    if out:
        import json

        (out / "data_report.json").write_text(json.dumps(data.report, indent=2))
    return 0


def cmd_eval(args, overrides) -> int:
    """Evaluate a model or a run directory's merged model on the chosen suites."""
    import json
    import time

    from . import ui
    from .data.chat import tokenize_examples
    from .data.load import load_examples
    from .data.tasks import generate_train_eval
    from .evaluate.harness import EvalContext, parse_suites, run_suites
    from .pipeline import SUITE_TITLES, _fmt

    suites = parse_suites(args.suite)
    target = Path(args.model)
    spec, out, n_eval, seed = args.model, None, args.tasks_n, args.seed
    if (target / "model" / "config.json").is_file():  # a run directory: its merged model and its eval items
        spec, out = str(target / "model"), target / "eval"
        if (target / "config.yaml").is_file():  # same held-out items as the run (only data.tasks is read)
            import yaml

            tasks = ((yaml.safe_load((target / "config.yaml").read_text()) or {}).get("data") or {}).get("tasks")
            if tasks:
                n_eval, seed = tasks.get("n_eval", n_eval), tasks.get("seed", seed)
    out = Path(args.out) if args.out else out or Path("runs") / "eval" / Path(args.model).name
    model, tokenizer = _load_for_inference(spec)
    _, items = generate_train_eval(0, n_eval, seed)
    if args.data:
        held_out = load_examples(args.data, on_error="skip").examples
    else:
        held_out = [it.to_example("tasks:eval") for it in items]
    loss_samples, _, _ = tokenize_examples(tokenizer, held_out, 4096, "truncate")
    ctx = EvalContext(task_items=items, loss_samples=loss_samples, max_new_tokens=args.max_new_tokens,
                      long_max_new_tokens=args.long_max_new_tokens, batch_size=args.batch_size, limit=args.limit,
                      humaneval_samples=args.humaneval_samples, seed=seed)
    t0 = time.perf_counter()
    results = run_suites(model, tokenizer, suites, ctx, Path(args.model).name)
    out.mkdir(parents=True, exist_ok=True)
    from rich.table import Table

    table = Table(title=f"evaluation of {args.model}")
    for col in ("suite", "n", "score", "details", "wall s"):
        table.add_column(col)
    for name, res in results.items():
        (out / f"{name}.json").write_text(json.dumps(res, indent=2))
        short = {"prompt_level_strict": "prompt strict", "instruction_level_strict": "instr strict",
                 "prompt_level_loose": "prompt loose", "instruction_level_loose": "instr loose"}
        details = {short.get(k, k): round(v, 4) for k, v in res.items()
                   if isinstance(v, float) and k not in ("score", "wall_s")}
        if isinstance(res.get("pass@k"), dict):
            details.update({f"pass@{k}": round(v, 4) for k, v in res["pass@k"].items()})
        table.add_row(SUITE_TITLES.get(name, name), str(res.get("n", "")), _fmt(res["score"], name != "loss"),
                      ", ".join(f"{k}={v}" for k, v in details.items()), str(res["wall_s"]))
    ui.console.print(table)
    ui.log(f"per-item records: {out}/<suite>.json  (total {time.perf_counter() - t0:.0f} s)")
    return 0


def _load_for_inference(model_spec: str):
    from . import ui
    from .models import load_model, load_tokenizer

    return load_model(model_spec, log=ui.log), load_tokenizer(model_spec, log=ui.log)


def cmd_generate(args, overrides) -> int:
    from .evaluate.generate import generate

    prompts = list(args.prompt or [])
    if args.file:
        prompts += [ln for ln in Path(args.file).read_text().splitlines() if ln.strip()]
    if not prompts:
        raise UsageError("give --prompt TEXT (repeatable) or --file PROMPTS.txt (one prompt per line)")
    model, tokenizer = _load_for_inference(args.model)
    convs = [[{"role": "user", "content": p}] for p in prompts]
    if args.system:
        convs = [[{"role": "system", "content": args.system}] + c for c in convs]
    outs = generate(model, tokenizer, convs, args.max_new_tokens, batch_size=args.batch_size,
                    temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    for p, o in zip(prompts, outs):
        print(o if len(prompts) == 1 else f"### {p}\n{o}\n")
    return 0


def cmd_chat(args, overrides) -> int:
    from .evaluate.generate import generate

    model, tokenizer = _load_for_inference(args.model)
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    print("chat: empty line or Ctrl-D to quit, /reset to clear the history")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        if text == "/reset":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": text})
        reply = generate(model, tokenizer, [history], args.max_new_tokens, temperature=args.temperature,
                         top_p=args.top_p, seed=args.seed)[0]
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunesmith", description="Data-aware, trustworthy, efficient instruction tuning.",
                                epilog="Recipe keys can be overridden: --section.key VALUE (e.g. --train.lr 1e-4).")
    sub = p.add_subparsers(dest="verb", required=True)

    def with_recipe(sp, required=True):
        sp.add_argument("recipe", nargs=None if required else "?", help="recipe YAML (see recipes/quickstart.yaml)")

    r = sub.add_parser("run", help="data check -> eval base -> train -> merge -> eval tuned, into one run directory")
    with_recipe(r)
    r.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    r.add_argument("--overwrite", action="store_true", help="start again in an output.dir that holds an earlier run")
    r.set_defaults(fn=cmd_run)

    t = sub.add_parser("train", help="data check -> train -> save adapter and merged model (no evaluation)")
    with_recipe(t)
    t.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    t.add_argument("--overwrite", action="store_true", help="start again in an output.dir that holds an earlier run")
    t.set_defaults(fn=cmd_train)

    d = sub.add_parser("data", help="data tools")
    dsub = d.add_subparsers(dest="data_verb", required=True)
    c = dsub.add_parser("check", help="validate, tokenize and mask data; report every bad row with file:line")
    with_recipe(c, required=False)
    c.add_argument("--data", help="file, folder or glob (overrides data.train)")
    c.add_argument("--out", help="directory for data_report.json and rejects.jsonl")
    c.set_defaults(fn=cmd_data_check)
    from .curate.cli import add_data_parsers

    add_data_parsers(dsub)  # data dedup, data decontaminate

    from .select.cli import add_select_parser

    add_select_parser(sub)

    e = sub.add_parser("eval", help="evaluate a model or a run directory on chosen suites; per-item records in JSON")
    e.add_argument("model", help="run directory (uses RUN/model), model directory, .gguf, bundled name or hub id")
    e.add_argument("--suite", default="tasks,loss",
                   help="comma-separated: tasks, loss, robustness, ifbench, ifeval, humaneval")
    e.add_argument("--limit", type=int, help="items per suite (default: all)")
    e.add_argument("--max-new-tokens", type=int, default=32, help="short-answer suites (tasks, robustness)")
    e.add_argument("--long-max-new-tokens", type=int, default=512, help="ifbench, ifeval, humaneval")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--humaneval-samples", type=int, default=0, help="sampled completions per problem for pass@k")
    e.add_argument("--tasks-n", type=int, default=260, help="held-out generated task items")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--data", help="held-out conversations for the loss suite (default: the task items)")
    e.add_argument("--out", help="where eval/<suite>.json go (default: RUN/eval or runs/eval/NAME)")
    e.set_defaults(fn=cmd_eval)

    for name, fn, hlp in (("generate", cmd_generate, "complete prompts with a model"),
                          ("chat", cmd_chat, "talk to a model in the terminal")):
        g = sub.add_parser(name, help=hlp)
        g.add_argument("--model", default="smollm2-135m-instruct",
                       help="bundled name, model directory (e.g. RUN/model), .gguf file or hub id")
        g.add_argument("--system", help="system prompt")
        g.add_argument("--max-new-tokens", type=int, default=128)
        g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        g.add_argument("--top-p", type=float, default=1.0)
        g.add_argument("--seed", type=int, default=0)
        if name == "generate":
            g.add_argument("--prompt", action="append", help="a prompt (repeatable)")
            g.add_argument("--file", help="a text file with one prompt per line")
            g.add_argument("--batch-size", type=int, default=16)
        g.set_defaults(fn=fn)
    return p


def _quiet_libraries() -> None:
    """Our own progress bars and messages replace the libraries' chatter."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=r".*torch_dtype.*is deprecated.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    try:
        rest, overrides = _split_overrides(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(rest)
        return args.fn(args, overrides)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted: completed checkpoints are kept; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
