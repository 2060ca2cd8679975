"""Run lists of experiment configs one after another and set the results beside the paper's.

Reproducing the paper's tables takes dozens of long runs; machines get preempted and runs
crash. A run list is therefore meant to be started again as it is: finished runs are
skipped, interrupted ones resume from their last checkpoint (both only when the run in the
folder has the settings asked for now: a folder holding a run of other settings stops the
command before any run, unless ``--overwrite`` starts it over), and every start ends with the
same two tables (``results.md``, ``results.csv``) of what has finished so far, each row
next to the paper's number for the same variant and setting (``paper_results.csv``) and
the difference.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os.path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from dcac_config.errors import CommandFailed, ConfigError
from dcac_config.generators.protocols import domain, paper_variant, setting_name
from dcac_config.loading import build_config
from dcac_config.names import nearest_names
from dcac_config.run_folder.save_dir import run_outputs
from dcac_config.run_settings import HOW_IT_RUNS, RUN_PLACE, describe, differences, recorded_settings, settings_of
from dcac_config.shipped import (CONFIG_SUFFIXES, RUN_LIST_SUFFIX, resolve_config, resolve_run_list, shipped_config,
                                 shipped_configs, shipped_run_list, shipped_run_lists)

from ..data.random_splits import split_ids_for
from ..utils.checkpoint import atomic_write
from ..utils.distributed import launched_info

PAPER_RESULTS = osp.join(osp.dirname(osp.abspath(__file__)), "paper_results.csv")

# ``split``: for a target evaluated on several random splits (iLIDS, PRID, GRID, VIPeR), ``mean``
# on the row of its mean (the one the Markdown table shows) and the split id on each split's row
# (results.csv only); empty for a dataset with one split.
TABLE_COLUMNS = ("config", "run", "status", "setting", "variant", "sources", "target", "mAP", "rank1",
                 "paper_mAP", "paper_rank1", "delta_mAP", "delta_rank1", "paper_tables", "split")
MEAN_ROW = "mean"


# ----------------------------------------------------------------------------- run lists

def read_run_list(path: str) -> List[str]:
    """The config paths a run list names, one a line, relative to the list's folder
    (``#`` starts a comment; blank lines are skipped)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"Run list not found: {path}") from None
    folder = osp.dirname(path)
    configs = []
    for number, line in enumerate(lines, 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        config = osp.normpath(osp.join(folder, entry))
        if not osp.isfile(config):
            raise ConfigError(f"{path}, line {number}: config file not found: {config}")
        configs.append(config)
    return configs


def run_dir(out_dir: str, config_path: str) -> str:
    """Where a config's run lives: ``<out_dir>/<config file stem>``."""
    return osp.join(out_dir, osp.splitext(osp.basename(config_path))[0])


def _unique_runs(configs: Sequence[str]) -> List[str]:
    """The configs once each; two different files with one stem would share a run folder."""
    by_stem: Dict[str, str] = {}
    for config in configs:
        stem = osp.basename(run_dir("", config))
        seen = by_stem.setdefault(stem, config)
        if osp.abspath(seen) != osp.abspath(config):
            raise ConfigError(f"Configs {seen} and {config} would share the run folder {stem!r}; rename one.")
    return list(by_stem.values())


# --------------------------------------------------------------------------- run status

def _read_summary(save_dir: str) -> Optional[dict]:
    """The launcher's results.json, or None when absent or unreadable (a crash mid-write)."""
    try:
        with open(osp.join(save_dir, "results.json"), encoding="utf-8") as handle:
            summary = json.load(handle)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _complete(summary: dict) -> bool:
    targets, results = summary.get("targets"), summary.get("results")
    if not targets or not isinstance(results, dict):
        return False
    return all(isinstance(results.get(t), dict) and "mAP" in results[t] and "rank1" in results[t] for t in targets)


def run_status(save_dir: str) -> str:
    """``done`` (results for every target), ``interrupted`` (a checkpoint, no complete
    results) or ``new``."""
    summary = _read_summary(save_dir)
    if summary is not None and _complete(summary):
        return "done"
    if osp.isfile(osp.join(save_dir, "model", "latest.pth.tar")):
        return "interrupted"
    return "new"


def other_settings(save_dir: str, cfg) -> Optional[str]:
    """Why the run ``save_dir`` holds is not the run ``cfg`` asks for (its ``config.yaml`` differs
    beyond where and how it runs, or it has none), or None when the folder holds no run or
    that run."""
    outputs = run_outputs(save_dir)
    if not outputs:
        return None
    recorded = recorded_settings(osp.join(save_dir, "config.yaml"))
    if recorded is None:
        return (f"it holds {', '.join(outputs[:3])}{', ...' if len(outputs) > 3 else ''} but no readable "
                "config.yaml, so its settings are unknown")
    found = differences(recorded, settings_of(cfg), ignored=RUN_PLACE + HOW_IT_RUNS)
    return describe(found) if found else None


def _asked_config(config: str, save_dir: str, opts: Sequence[str]):
    """The config a run of the list is asked to run with, or None when it cannot be built (the
    run then fails at its turn, with that error)."""
    try:
        return build_config(config, list(opts) + ["data.save_dir", save_dir])
    except ConfigError:
        return None


def check_settings(configs: Sequence[str], out_dir: str, opts: Sequence[str], overwrite: bool) -> Dict[str, str]:
    """{save_dir: what differs} of the list's folders that hold a run of other settings than
    asked now. Without ``overwrite`` any such folder stops the command here, before any run,
    naming the keys and both values and the two ways on."""
    stale = {}
    for config in configs:
        save_dir = run_dir(out_dir, config)
        cfg = _asked_config(config, save_dir, opts)
        why = other_settings(save_dir, cfg) if cfg is not None else None
        if why:
            stale[save_dir] = why
    if stale and not overwrite:
        (first, why), others = next(iter(stale.items())), list(stale)[1:]
        more = (f"; so do {len(others)} more run folder{'s' if len(others) > 1 else ''} of this list "
                f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})" if others else "")
        raise ConfigError(f"{first} holds a run of other settings than asked now ({why}), so its results are not "
                          f"this setting's{more}. To keep {'those runs' if others else 'that run'}, pass another "
                          f"--out; to replace {'them' if others else 'it'}, pass --overwrite (each such run starts "
                          "over in its folder: its outputs are deleted when it starts; its logs and any other files "
                          "stay).")
    return stale


# ------------------------------------------------------------------------------ running

def continuation_opts(status: str, save_dir: str) -> List[str]:
    """How a run of the list carries on from what its folder holds: an interrupted run is
    resumed; a run that stopped before its first checkpoint (outputs such as config.yaml or
    event files, nothing to resume) starts over in its own folder, which the launcher would
    otherwise refuse as holding another run."""
    if status == "interrupted":
        return ["model.resume", save_dir]
    if status == "new" and run_outputs(save_dir):
        print(f"starting over: {save_dir} holds a run that stopped before its first checkpoint", flush=True)
        return ["data.overwrite", "True"]
    return []


def run_experiments(configs: Sequence[str], out_dir: str, opts: Sequence[str] = (), keep_going: bool = False,
                    runner: Optional[Callable[[Any], Any]] = None, overwrite: bool = False) -> List[dict]:
    """Run ``configs`` one after another, each in ``run_dir(out_dir, config)``: done runs
    are skipped, interrupted ones resumed. ``opts`` (KEY VALUE pairs) apply to every run.
    A folder holding a run of other settings (:func:`check_settings`) stops the command before
    any run; with ``overwrite`` that run starts over in its folder instead.

    Returns one record per run: config, save_dir, status (before this call), action
    (skipped | ran | resumed | failed) and error. The result tables are written at the
    end, also when a run fails and the exception is passed on.
    """
    if runner is None:
        from ..run.launcher import run as runner
    configs = _unique_runs(configs)
    stale = check_settings(configs, out_dir, opts, overwrite)
    records: List[dict] = []
    try:
        for index, config in enumerate(configs, 1):
            save_dir = run_dir(out_dir, config)
            status = "other settings" if save_dir in stale else run_status(save_dir)
            print(f"\n[{index}/{len(configs)}] {config} -> {save_dir} ({status})", flush=True)
            record = {"config": config, "save_dir": save_dir, "status": status, "action": "skipped", "error": ""}
            records.append(record)
            if status == "done":
                print("skip (done)", flush=True)
                continue
            if save_dir in stale:
                print(f"starting over (--overwrite): {save_dir} holds a run of other settings ({stale[save_dir]})",
                      flush=True)
                continuation = ["data.overwrite", "True"]
            else:
                continuation = continuation_opts(status, save_dir)
            run_opts = list(opts) + ["data.save_dir", save_dir] + continuation
            record["action"] = "resumed" if status == "interrupted" else "ran"
            try:
                runner(build_config(config, run_opts))
            except Exception as err:
                record["action"], record["error"] = "failed", f"{type(err).__name__}: {err}"
                if not keep_going:
                    raise
                print(f"[{index}/{len(configs)}] failed, going on: {record['error']}", flush=True)
    finally:
        # Under torchrun every rank runs the list; one writes the tables.
        if launched_info().is_main:
            write_tables(collect(configs, out_dir, opts), out_dir)
    return records


# ------------------------------------------------------------------------ paper numbers

def load_paper_results(path: str = PAPER_RESULTS) -> List[dict]:
    """The paper's numbers for its baseline and DCAC rows (Tables 2-5, 7, 9, 10)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return [{"table": int(row["table"]), "variant": row["variant"], "sources": row["sources"].split("+"),
                 "target": row["target"], "mAP": float(row["mAP"]), "rank1": float(row["rank1"])}
                for row in csv.DictReader(handle)]


def _paper_key(variant: str, sources: Sequence[str], target: str) -> tuple:
    # Registered layouts of one dataset (msmt17_folder, cuhk03_np) count as the same
    # dataset, and the order sources are listed in does not change the setting.
    return variant, tuple(sorted(domain(s) for s in sources)), domain(target)


def _paper_index(rows: Sequence[dict]) -> Dict[tuple, dict]:
    """One entry per (variant, sources, target); the tables that print it repeat its numbers."""
    index: Dict[tuple, dict] = {}
    for row in rows:
        entry = index.setdefault(_paper_key(row["variant"], row["sources"], row["target"]),
                                 {"mAP": row["mAP"], "rank1": row["rank1"], "tables": []})
        entry["tables"].append(row["table"])
    return index


# ----------------------------------------------------------------------------- results

def collect(configs: Sequence[str], out_dir: str, opts: Sequence[str] = ()) -> List[dict]:
    """One row per (run, target): our mAP and Rank-1 (percent) from the run's results.json,
    the paper's for the same variant and setting, and the differences (ours - paper).

    Runs that are not done get rows without our numbers, with their status. ``opts`` are
    the overrides the runs were started with (they can change the variant).
    """
    paper = _paper_index(load_paper_results())
    rows = []
    for config in _unique_runs(configs):
        save_dir = run_dir(out_dir, config)
        status = run_status(save_dir)
        base = {column: None for column in TABLE_COLUMNS}
        base.update(config=config, run=osp.basename(save_dir), status=status)
        try:
            cfg = build_config(config, list(opts) + ["data.save_dir", save_dir])
        except ConfigError as err:
            rows.append({**base, "status": f"bad config: {err}"})
            continue
        if other_settings(save_dir, cfg):
            # Its numbers are another setting's: not tabulated as this one's.
            status = base["status"] = "other settings"
        # What was run is in results.json; the config is the fallback for runs not done.
        summary = _read_summary(save_dir) if status == "done" else None
        sources = summary["sources"] if summary else list(cfg.data.sources)
        targets = summary["targets"] if summary else list(cfg.data.targets)
        variant = paper_variant(cfg)
        for target in targets:
            row = {**base, "setting": setting_name(sources, target), "variant": variant,
                   "sources": "+".join(sources), "target": target}
            metrics = summary["results"][target] if summary else {}
            if summary:
                row.update(mAP=100 * metrics["mAP"], rank1=100 * metrics["rank1"])
            split_ids = metrics.get("split_ids") if summary else split_ids_for(target, list(cfg.test.split_ids))
            if split_ids:
                row.update(split=MEAN_ROW, setting=f"{row['setting']} (mean of {len(split_ids)} splits)")
            reference = paper.get(_paper_key(variant, sources, target))
            if reference:
                row.update(paper_mAP=reference["mAP"], paper_rank1=reference["rank1"],
                           paper_tables=",".join(str(t) for t in reference["tables"]))
                if summary:
                    row.update(delta_mAP=row["mAP"] - reference["mAP"],
                               delta_rank1=row["rank1"] - reference["rank1"])
            rows.append(row)
            rows.extend(_split_rows(row, metrics.get("splits") or {}))
    return rows


def _split_rows(mean_row: dict, splits: Dict[str, dict]) -> List[dict]:
    """One row per split of a random-split target (the paper reports no per-split numbers)."""
    rows = []
    for split_id, metrics in sorted(splits.items(), key=lambda item: int(item[0])):
        row = {**mean_row, "setting": mean_row["setting"].split(" (mean of", 1)[0], "split": split_id,
               "mAP": 100 * metrics["mAP"], "rank1": 100 * metrics["rank1"]}
        row.update(dict.fromkeys(("paper_mAP", "paper_rank1", "delta_mAP", "delta_rank1", "paper_tables")))
        rows.append(row)
    return rows


def _number(value: Optional[float], digits: int, missing: str, signed: bool = False) -> str:
    if value is None:
        return missing
    text = f"{value:{'+' if signed else ''}.{digits}f}"
    # A difference that rounds to zero reads +0.0, not -0.0.
    return text.replace("-", "+") if signed and float(text) == 0 else text


def format_markdown(rows: Sequence[dict]) -> str:
    """The Markdown table of ``collect``'s rows; '-' where a number is missing. A random-split
    target shows its mean over the splits (each split's row is in results.csv)."""
    lines = ["| config | setting | variant | mAP | R1 | paper mAP | paper R1 | ΔmAP | ΔR1 | status |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        if row["split"] not in (None, MEAN_ROW):
            continue
        cells = [row["run"], row["setting"] or "-", row["variant"] or "-",
                 _number(row["mAP"], 1, "-"), _number(row["rank1"], 1, "-"),
                 _number(row["paper_mAP"], 1, "-"), _number(row["paper_rank1"], 1, "-"),
                 _number(row["delta_mAP"], 1, "-", signed=True), _number(row["delta_rank1"], 1, "-", signed=True),
                 row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_csv(rows: Sequence[dict]) -> str:
    """``collect``'s rows as CSV; empty cells where a number is missing."""
    digits = {"mAP": 2, "rank1": 2, "paper_mAP": 1, "paper_rank1": 1, "delta_mAP": 2, "delta_rank1": 2}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for row in rows:
        writer.writerow([_number(row[c], digits[c], "", signed=c.startswith("delta")) if c in digits
                         else (row[c] if row[c] is not None else "") for c in TABLE_COLUMNS])
    return buffer.getvalue()


def write_tables(rows: Sequence[dict], out_dir: str) -> Tuple[str, str]:
    """``results.md`` and ``results.csv`` in ``out_dir``, each replaced atomically so a
    reader never sees half a table."""
    paths = []
    for name, text in (("results.md", format_markdown(rows)), ("results.csv", format_csv(rows))):
        path = osp.join(out_dir, name)
        atomic_write(path, lambda handle, text=text: handle.write(text.encode("utf-8")))
        paths.append(path)
    return paths[0], paths[1]


# --------------------------------------------------------------------------------- CLI

def _shipped_item(item: str) -> Optional[List[str]]:
    """The configs a positional item names, or None when it names none (KEY VALUE pairs start).

    Suffixes decide for paths (a ``.txt`` run list, a ``.yaml`` config: a file or a shipped
    name); a bare word counts only when it is a shipped run list or config name.
    """
    if item.endswith(RUN_LIST_SUFFIX):
        return read_run_list(resolve_run_list(item))
    if item.endswith(CONFIG_SUFFIXES):
        return [resolve_config(item)]
    run_list, config = shipped_run_list(item), shipped_config(item)
    if run_list:
        return read_run_list(run_list)
    return [config] if config else None


def _runs_and_opts(items: Sequence[str], opts: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Config paths from the positional items, and the KEY VALUE pairs.

    argparse gives every positional word to ``lists_or_configs``; the run lists and
    configs are the leading ones (paths or shipped names), the rest are KEY VALUE pairs.
    """
    configs: List[str] = []
    for position, item in enumerate(items):
        named = _shipped_item(item)
        if named is None:
            opts = list(items[position:]) + list(opts)
            break
        configs.extend(named)
    if not configs:
        close = nearest_names(items[0], list(shipped_run_lists()) + list(shipped_configs())) if items else []
        hint = f" {items[0]!r} is neither; nearest shipped names: {', '.join(close)}." if close else ""
        raise ConfigError("Name at least one run list (.txt or a shipped name such as table2) or config (.yaml) "
                          f"before the KEY VALUE overrides.{hint} `dcac configs` lists the shipped ones.")
    if opts and opts[0].startswith("-"):
        raise ConfigError(f"Option {opts[0]} after the run lists; options go before them "
                          "(dcac experiments [options] LIST_OR_CONFIG ... [KEY VALUE ...]).")
    return configs, list(opts)


def cmd_experiments(args: argparse.Namespace) -> int:
    """Run (or with --collect-only just tabulate) the runs; print the Markdown table.
    Raises :class:`CommandFailed` (exit status 1) when a run failed under --keep-going."""
    configs, opts = _runs_and_opts(args.lists_or_configs, args.opts or [])
    if args.root:
        opts = ["data.root", args.root] + opts
    records: List[dict] = []
    if args.collect_only:
        write_tables(collect(configs, args.out, opts), args.out)
    else:
        records = run_experiments(configs, args.out, opts, keep_going=args.keep_going, overwrite=args.overwrite)
    if not launched_info().is_main:
        return 0
    with open(osp.join(args.out, "results.md"), encoding="utf-8") as handle:
        print("\n" + handle.read(), end="")
    print(f"Runs under {args.out}/; tables in {osp.join(args.out, 'results.md')} and results.csv")
    failed = [record for record in records if record["action"] == "failed"]
    if failed:
        raise CommandFailed(f"{len(failed)} of {len(records)} runs failed: "
                            + "; ".join(f"{record['config']}: {record['error']}" for record in failed))
    return 0
