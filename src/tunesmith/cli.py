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
