"""`cratelab interpret`: a checkpoint's neurons explained, simulated and scored, in a resumable run folder.

The run folder (delphi-style: a stage whose output exists and is complete is skipped, so a killed
or extended run picks up where it stopped):

    run.json            what the folder was made from (checkpoint and data hashes, interp settings);
                        a rerun with other result-changing settings is refused, not mixed in, except
                        a subset of its protocols (the others' rows stay) and, while no neuron is
                        scored yet, other scoring settings (SCORING_SETTINGS: the records are kept)
    config.toml         the checkpoint's run config with the [interp] section used
    records/layer{l}/   LayerRecords.save + meta.json (checkpoint hash, data hash, seed, tokens);
                        written to a temporary folder and renamed, so a folder there is complete
    scores.jsonl        one line per (layer, neuron, protocol): NeuronScore.to_row, score.ROW_FIELDS
                        (score null when unscorable; `simulation` and the explainer and simulator
                        models say how it was made)
    simulations.jsonl   the simulated activations behind each score (for the cards), same keys
    scores.csv          scores.jsonl as a table, sorted
    summary.json / .md  summary.py: per layer and protocol, mean, bootstrap CI over neurons, the mean
                        counting unscorable neurons as 0, counts (by reason); per protocol the model means
    cards/              HTML neuron cards (cards/index.html)

scores.jsonl is appended a neuron at a time (all its protocols), flushed and fsynced; on restart it
is read back, a cut-off last line is dropped, and only the missing (layer, neuron, protocol) are
scored: no neuron is scored twice and none is lost. A failed neuron is finished too; with
retry_failed (--retry-failed) the rows that failed for transport reasons (score.FAILURES) are taken
out of scores.jsonl first and scored again. The file names are in files.py.

Progress: a bar on a terminal; into a log (stderr not a terminal, progress=None) a plain line when
scoring starts, after the first neuron, then every PROGRESS_EVERY_S and at the end.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from ..checkpoint import Checkpoint, check_tokenizer, checkpoint_file, load_checkpoint
from ..config import RunConfig, changed_values, dump_toml, execution_settings, flat_settings
from ..data.corpus import default_cache_dir
from ..errors import CratelabError
from ..io import (JsonlAppender, building_folder, cut_unfinished_line, folder_lock, keep_jsonl, read_json_object,
                  read_jsonl, sha256_file, write_csv, write_json, write_text)
from ..layout import (CARDS, CARDS_INDEX, CONFIG, DATA, INTERPRET_FORMAT, RECORDS, RECORDS_META, SCORES, SCORES_CSV,
                      SIMULATIONS, SUMMARY_JSON, SUMMARY_MD, layer_folder)
from ..layout import INTERP_RUN as RUN
from ..progress import duration, time_left
from ..runtime import set_threads
from .activations import LayerRecords, NeuronRecord
from .collect import collect_records
from .config import InterpConfig
from .explain import Explainer
from .failure import NeuronFailure, neuron_deadline
from .files import encode_simulation
from .methods import check_backend, make_backend
from .protocols import ScoringProtocol, get_protocol
from .score import ROW_FIELDS, NeuronScore, flag_degenerate, score_neuron
from .simulate import Simulator
from .summary import summarize, summary_markdown
from .source import ActivationSource, model_neurons

if TYPE_CHECKING:
    from ..data.shards import TokenDataset

FSYNC_EVERY_S = 0.5
PROGRESS_EVERY_S = 60.0  # a plain progress line at most this often (a local LLM takes minutes a neuron)
# settings that shape the scores, not the records: while no neuron is scored, a rerun may change them (a start
# refused or failed after the records were built keeps them, and does not block the corrected command)
SCORING_SETTINGS = ("interp.method", "interp.protocols", "interp.neurons", "interp.backend.")


def neuron_subset(icfg: InterpConfig, layer: int, n_neurons: int) -> list[int]:
    """The neurons of a layer to score: all, or `icfg.neurons` of them drawn with (seed, layer)."""
    if icfg.neurons == 0 or icfg.neurons >= n_neurons:
        return list(range(n_neurons))
    rng = np.random.default_rng([icfg.seed, layer])
    return sorted(rng.choice(n_neurons, icfg.neurons, replace=False).tolist())


# ---------------------------------------------------------------- scoring one neuron

class _ExplainOnce:
    """The explainer, asked once per list of explanation records of one neuron: protocols that explain from
    the same records (top-and-random and random-only) share the explanation, as OpenAI's method scores one
    explanation on several sets of records. A failure is shared too."""

    def __init__(self, explainer: Explainer):
        self.explainer = explainer
        self.model = getattr(explainer, "model", "")
        self._answers: dict[tuple[int, ...], tuple[str | None, NeuronFailure | None]] = {}

    def explain(self, records: Sequence[Any]) -> str:
        key = tuple(map(id, records))  # the records are the neuron's own objects, alive while it is scored
        if key not in self._answers:
            try:
                self._answers[key] = (self.explainer.explain(records), None)
            except NeuronFailure as failure:
                self._answers[key] = (None, failure)
        explanation, failure = self._answers[key]
        if failure is not None:
            raise failure
        return explanation


def score_protocols(record: NeuronRecord, protocols: Sequence[ScoringProtocol], explainer: Explainer,
                    simulator: Simulator) -> list[tuple[NeuronScore, list[np.ndarray] | None]]:
    """The neuron's score under each protocol, with the simulated activations of its scoring records
    (None when it was unscorable before any simulation)."""
    out = []
    explainer = _ExplainOnce(explainer)
    for protocol in protocols:
        simulated: list[np.ndarray] = []
        score = score_neuron(record, protocol, explainer, simulator, simulated_out=simulated)
        out.append((score, simulated or None))
    return out


def _key(row: dict[str, Any]) -> tuple[int, int, str]:
    return int(row["layer"]), int(row["neuron"]), str(row["protocol"])


def failed_for_transport(row: dict[str, Any]) -> bool:
    """Whether a score row failed for transport reasons (the endpoint unreachable or refusing), to retry."""
    return row["failure"] == "transport"


def read_scores(path: Path) -> dict[tuple[int, int, str], dict[str, Any]]:
    """The rows of a scores.jsonl by key (a cut-off last line dropped and cut from the file); a row that is
    not a score is a CratelabError naming the file and the line."""
    done = {}
    for n, row in enumerate(read_jsonl(path, repair=True), 1):
        if not (all(isinstance(row.get(k), int) and not isinstance(row.get(k), bool) for k in ("layer", "neuron"))
                and isinstance(row.get("protocol"), str)
                and (row.get("score") is None or isinstance(row.get("score"), (int, float)))):
            raise CratelabError(f"{path}: line {n} is not a neuron score (expected integer layer and neuron, a "
                                "protocol and a numeric or null score); delete the file to score afresh")
        if missing := [name for name in ROW_FIELDS if name not in row]:
            raise CratelabError(f"{path}: line {n} has no {', '.join(map(repr, missing))} (a score row of another "
                                "format: of an earlier cratelab?); delete the file to score afresh")
        done[_key(row)] = row
    return done


# ---------------------------------------------------------------- the stages

def _has_results(out: Path) -> bool:
    """Whether the folder holds records or scores (else a run that failed early, e.g. on a wrong corpus)."""
    scores = out / SCORES
    return any((out / RECORDS).glob(f"layer*/{RECORDS_META}")) or (scores.is_file() and scores.stat().st_size > 0)


def _protocols(value: Any) -> set[str]:
    return {part.strip() for part in str(value).split(",")}


def _check_identity(out: Path, identity: dict[str, Any]) -> None:
    path = out / RUN
    if not (path.is_file() and _has_results(out)):  # the new settings take the folder over
        write_json(path, identity)
        return
    old = read_json_object(path, what="interpret run description")
    changed = changed_values(old, identity)
    scores = out / SCORES
    if changed and all(key.startswith(SCORING_SETTINGS) for key in changed) and not (
            scores.is_file() and scores.stat().st_size > 0):
        (out / SIMULATIONS).unlink(missing_ok=True)  # of neurons cut off before their score: not these settings'
        write_json(path, identity)
        return
    for key, (was, now) in changed.items():
        if key == "interp.protocols" and _protocols(now) <= _protocols(was):
            continue  # a subset of the folder's protocols: their rows are scored as before, the others' kept
        made = f"with no {key} (a folder of an earlier cratelab)" if was is None else f"with {key} = {was!r}"
        raise CratelabError(
            f"{out} holds a run made {made}, this one has {now!r}: "
            "use another --out (or delete that folder) to start afresh"
            + (" (a subset of its protocols is accepted)" if key == "interp.protocols" else ""))


def run_dataset(ckpt: Checkpoint, progress: bool) -> TokenDataset:
    """The dataset whose held-out text the records are read from: data.* as the run was trained on it (or as
    overridden), in the data cache the run was trained with (its data.json names it) when data.cache_dir follows
    $CRATELAB_CACHE, so a run trained under another CRATELAB_CACHE finds its data; where they are found nowhere,
    the error says where they were and how to point at them."""
    from ..data.shards import prepare_dataset, run_data_identity

    cfg = ckpt.config.data
    trained = run_data_identity(ckpt.path)
    # data.json names <cache>/datasets/<key>
    trained_cache = Path(trained["path"]).parents[1] if trained and trained.get("path") else None
    if not cfg.cache_dir and trained_cache is not None and trained_cache.is_dir():
        cfg = dataclasses.replace(cfg, cache_dir=str(trained_cache))
    try:
        return prepare_dataset(cfg, progress=progress)
    except CratelabError as err:
        if cfg.corpus != "default" and not cfg.corpus.startswith("hf:"):  # a corpus outside the cache
            raise
        where = (f"the run was trained with the data cache {trained_cache}, which is not there"
                 if trained_cache is not None else
                 f"{ckpt.path} does not record its data cache (trained before runs wrote {DATA})")
        raise CratelabError(f"{err} ({where}; this looked in {default_cache_dir(cfg.cache_dir)}: set CRATELAB_CACHE "
                            "or --set data.cache_dir=PATH to the cache the run was trained with)") from None


def _records_stage(ckpt: Checkpoint, out: Path, layers: list[int], icfg: InterpConfig, identity: dict[str, Any],
                   progress: bool, source: ActivationSource) -> tuple[dict[int, LayerRecords], bool]:
    """The records of the layers, collected in one pass for those whose folder is missing; and whether any was."""
    root = out / RECORDS
    missing = [layer for layer in layers if not (layer_folder(root, layer) / RECORDS_META).is_file()]
    fresh: dict[int, LayerRecords] = {}
    if missing:
        from ..runtime import resolve_device

        device = resolve_device(icfg.device, setting="interp.device")
        dataset = run_dataset(ckpt, progress)
        check_tokenizer(ckpt, dataset.tokenizer)
        tok = ckpt.tokenizer
        vocab = [tok.token_str(i) for i in range(tok.vocab_size)]
        fresh = collect_records(ckpt.model, dataset.val, vocab, layers=missing, n_tokens=icfg.tokens,
                                eot_id=tok.eot_id, seed=icfg.seed, config=icfg.records,
                                batch_size=icfg.batch_size, device=device, progress=progress, source=source)
        for layer, records in fresh.items():
            with building_folder(layer_folder(root, layer)) as tmp:
                records.save(tmp)
                write_json(tmp / RECORDS_META, {**identity, "data_sha256": dataset.meta["splits"]["val"]["sha256"],
                                               "layer": layer, "seed": records.seed, "n_tokens": records.n_tokens,
                                               "n_neurons": records.n_neurons})
    records = {layer: fresh[layer] if layer in fresh else LayerRecords.load(layer_folder(root, layer))
               for layer in layers}
    return records, bool(fresh)


class ProgressLines:
    """Scoring progress as plain lines for a log (tqdm's bar is for terminals): neurons done of the total,
    the time taken, the rate and the time left; after the first neuron, then at most every `every_s`, and
    at the end."""

    def __init__(self, total: int, what: str, every_s: float = PROGRESS_EVERY_S):
        self.total, self.every_s, self.done = total, every_s, 0
        self.start, self.last = time.perf_counter(), None
        print(f"scoring {total} neurons ({what})", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.last is not None and now - self.last < self.every_s and self.done < self.total:
            return
        self.last, elapsed = now, now - self.start
        per = elapsed / self.done
        rate = f"{per:.1f} s/neuron" if per >= 1 else f"{1 / per:.1f} neurons/s"
        print(f"scoring: {self.done}/{self.total} neurons, {duration(elapsed)} elapsed, {rate}"
              f"{time_left(self.done, self.total, elapsed)}",
              file=sys.stderr, flush=True)


def _scoring_stage(out: Path, records: dict[int, LayerRecords], subsets: dict[int, list[int]],
                   protocols: list[ScoringProtocol], icfg: InterpConfig, progress: bool, log_lines: bool = False,
                   retry_failed: bool = False) -> tuple[list[dict[str, Any]], int]:
    """The scores.jsonl rows of every requested (layer, neuron, protocol), scoring the missing ones first
    (and, with retry_failed, those that failed for transport reasons); and how many neurons were scored now."""
    done = read_scores(out / SCORES)
    if retry_failed and any(failed_for_transport(row) for row in done.values()):
        # out of the file first (atomically): a kill before they are rescored leaves them missing, still to do
        keep_jsonl(out / SCORES, lambda row: not failed_for_transport(row))
        done = {key: row for key, row in done.items() if not failed_for_transport(row)}
    cut_unfinished_line(out / SIMULATIONS)
    todo = [(layer, h) for layer, neurons in subsets.items() for h in neurons
            if any((layer, h, p.name) not in done for p in protocols)]
    if todo:
        explainer, simulator = make_backend(icfg.method, icfg.backend)
        # scores.jsonl is the record of what is done: fsynced, at most FSYNC_EVERY_S apart (an fsync
        # per neuron here costs 2-4 ms, as much as scoring the neuron offline). The simulations only feed
        # the cards, which show a neuron without them if a power cut took their last lines.
        scores, sims = JsonlAppender(out / SCORES, FSYNC_EVERY_S), JsonlAppender(out / SIMULATIONS, None)

        def job(layer: int, h: int) -> list[tuple[NeuronScore, list[np.ndarray] | None]]:
            wanted = [p for p in protocols if (layer, h, p.name) not in done]
            with neuron_deadline(icfg.backend.neuron_deadline_s):  # heeded by the endpoint backend
                return score_protocols(records[layer].neuron(h), wanted, explainer, simulator)

        def save(results: list[tuple[NeuronScore, list[np.ndarray] | None]]) -> None:
            # simulations first: a kill between the two writes leaves a neuron to rescore, not a score
            # without its simulation (the cards read the last simulation of a key)
            sims.write({"layer": s.layer, "neuron": s.neuron, "protocol": s.protocol, **encode_simulation(sim)}
                       for s, sim in results if sim is not None)
            rows = [s.to_row(icfg.method) for s, _ in results]
            scores.write(rows)
            done.update((_key(row), row) for row in rows)

        try:
            with tqdm(total=len(todo), unit="neuron", desc="scoring", disable=not progress) as bar:
                lines = ProgressLines(len(todo), f"{', '.join(p.name for p in protocols)}; {icfg.method}") \
                    if log_lines else None
                for results in _run_jobs(job, todo, icfg.workers):
                    save(results)
                    bar.update(1)
                    if lines:
                        lines.update(1)
        finally:
            scores.close()
            sims.close()
    rows = [done[(layer, h, p.name)] for layer, neurons in subsets.items() for h in neurons for p in protocols]
    return flag_degenerate(rows), len(todo)


def _run_jobs(job, todo: list[tuple[int, int]], workers: int) -> Iterator[Any]:
    """job(*args) for each args, results as they finish; with workers > 1 in threads, a bounded number at once."""
    if workers == 1:
        for args in todo:
            yield job(*args)
        return
    pending: set[Future] = set()
    args_left = iter(todo)
    with ThreadPoolExecutor(workers) as pool:
        try:
            while True:
                while len(pending) < 2 * workers and (args := next(args_left, None)) is not None:
                    pending.add(pool.submit(job, *args))
                if not pending:
                    return
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()


# ---------------------------------------------------------------- the pipeline

def interpret(checkpoint: Checkpoint | str | Path, out_dir: str | Path, icfg: InterpConfig | None = None,
              progress: bool | None = None, source: ActivationSource | None = None,
              retry_failed: bool = False) -> dict[str, Any]:
    """Records, scores, summary and cards of a checkpoint's neurons in out_dir; returns the summary.

    checkpoint: a loaded Checkpoint (its config's [data] says which held-out text to read) or a path.
    icfg: defaults to the checkpoint's own [interp] section. Rerunning on the same out_dir resumes.
    source: the units scored (default: each layer's neurons; e.g. an SAE's features, cratelab.sae.sae_source).
    retry_failed: score again the neurons that failed for transport reasons (a resume keeps them otherwise);
    the summary's n_transport_failures counts those left.
    progress: None = a bar on a terminal, plain progress lines otherwise (a log); False = quiet.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    icfg = icfg if icfg is not None else ckpt.config.interp
    icfg.validate()
    log_lines = progress is None and not sys.stderr.isatty()
    progress = sys.stderr.isatty() if progress is None else progress
    set_threads(icfg.threads, "interp.threads")
    mcfg = ckpt.model.config
    icfg.check_model(mcfg.n_layer, mcfg.block_size)
    layers = icfg.layer_list(mcfg.n_layer)
    protocols = [get_protocol(name) for name in icfg.protocol_list()]
    out = Path(out_dir)
    if not (out / SCORES).is_file():
        # nothing scored yet, so the backend must start: a missing local model or key is found before any folder or
        # record is made (a folder with scores has its records, and a finished one needs no backend)
        check_backend(icfg.method, icfg.backend)
    with folder_lock(out):  # a second process on the folder would score the same neurons into it
        return _interpret_in(out, ckpt, icfg, layers, protocols, progress, log_lines, source, retry_failed)


def _interpret_in(out: Path, ckpt: Checkpoint, icfg: InterpConfig, layers: list[int], protocols: list[ScoringProtocol],
                  progress: bool, log_lines: bool, source: ActivationSource | None,
                  retry_failed: bool) -> dict[str, Any]:
    mcfg = ckpt.model.config
    # seconds per stage, kept from earlier invocations for the stages this one skips
    timing: dict[str, float] = {}
    if (out / SUMMARY_JSON).is_file():
        timing = read_json_object(out / SUMMARY_JSON, what="interpret summary").get("timing", {})

    ckpt_file = checkpoint_file(ckpt.path)
    # the execution settings (how fast it goes, how it is reported) never change its records or scores
    execution = execution_settings(InterpConfig)
    settings = {k: v for k, v in flat_settings(dataclasses.asdict(icfg)).items() if k not in execution}
    for name in ("backend.explainer_prompt", "backend.simulator_prompt"):  # what a template says, not where
        if settings[name]:
            settings[name] = sha256_file(Path(settings[name]))
    data = {k: v for k, v in dataclasses.asdict(ckpt.config.data).items() if k != "cache_dir"}
    identity = {"format": INTERPRET_FORMAT, "checkpoint_sha256": sha256_file(ckpt_file), "data": data,
                "interp": settings}
    source = source or model_neurons(mcfg)
    identity["source"] = source.identity
    _check_identity(out, identity)
    run_cfg = RunConfig(model=ckpt.config.model, data=ckpt.config.data, train=ckpt.config.train,
                        eval=ckpt.config.eval, interp=icfg)
    write_text(out / CONFIG, dump_toml(run_cfg))

    t0 = time.perf_counter()
    records, collected = _records_stage(ckpt, out, layers, icfg, identity, progress, source)
    if collected:
        timing["records_s"] = time.perf_counter() - t0

    subsets = {layer: neuron_subset(icfg, layer, source.n_units) for layer in layers}
    t0 = time.perf_counter()
    rows, scored = _scoring_stage(out, records, subsets, protocols, icfg, progress, log_lines, retry_failed)
    if scored:  # a resumed run adds the time it took to finish
        timing["scoring_s"] = timing.get("scoring_s", 0.0) + time.perf_counter() - t0

    first = records[layers[0]]
    summary = {
        "format": INTERPRET_FORMAT, "checkpoint": str(ckpt.path), "checkpoint_sha256": identity["checkpoint_sha256"],
        "step": ckpt.step, "arch": mcfg.arch, **({"source": identity["source"]} if "source" in identity else {}),
        "method": icfg.method, "protocols": [p.name for p in protocols],
        "n_tokens": first.n_tokens, "n_neurons": source.n_units, "neurons_per_layer": len(subsets[layers[0]]),
        "settings": dataclasses.asdict(icfg),
        **summarize(rows, layers, [p.name for p in protocols], icfg),
        "n_transport_failures": len({_key(row)[:2] for row in rows if failed_for_transport(row)}),  # neurons
    }
    write_csv(out / SCORES_CSV, ROW_FIELDS, rows)
    index = out / CARDS / CARDS_INDEX
    if icfg.cards and (scored or not index.is_file()):
        from .cards import write_cards

        index.unlink(missing_ok=True)  # neurons scored again (--retry-failed) make the cards there stale
        t0 = time.perf_counter()
        write_cards(out, records=records, rows=rows, summary=summary, max_cards=icfg.max_cards, progress=progress)
        timing["cards_s"] = time.perf_counter() - t0
    summary["timing"] = timing
    write_json(out / SUMMARY_JSON, summary)
    write_text(out / SUMMARY_MD, summary_markdown(summary))
    return summary
