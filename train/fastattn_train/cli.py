"""The `fastattn` command: build a corpus, pre-train an encoder, probe or analyse it, compare
attention kinds in a report, or run the main job.

    fastattn corpus data/synth                                  # the default eSpeak NG corpus
    fastattn pretrain data/synth --config tiny --set model.attention=strided --out runs/strided
    fastattn probe data/synth --checkpoint runs/strided/checkpoint.pt
    fastattn probe data/synth --log-mel                         # the paper's "Mel features" row
    fastattn analyse data/synth --checkpoint runs/strided/checkpoint.pt --out runs/strided/analysis
    fastattn report data/synth --kinds full,fixed_pattern,strided --seeds 3 --out runs/report
    fastattn main                                               # corpus, two models, probes, the report

Every sub-command explains its options with --help.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DESCRIPTION = __doc__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastattn", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_corpus_parser, _pretrain_parser, _probe_parser, _analyse_parser, _report_parser, _main_job_parser):
        add(commands)
    args = parser.parse_args(argv)
    return args.run(args) or 0


def _corpus_parser(commands) -> None:
    parser = commands.add_parser(
        "corpus", help="synthesise a labelled LibriSpeech-layout corpus with eSpeak NG",
        description="Synthesise a LibriSpeech-layout corpus (16 kHz WAV, speaker from the path, 10 ms frame "
                    "phone labels in s3prl format under phones/<split>.txt, manifest.json) with eSpeak NG. "
                    "The output is byte-identical for a seed, whatever the number of workers.")
    parser.add_argument("root", type=Path, help="where to write it; must not exist or be empty")
    parser.add_argument("--speakers", type=int, default=40, help="distinct random voices (default 40)")
    parser.add_argument("--utterances", type=int, default=30,
                        help="utterances per speaker, split train/dev/test 80/10/10 (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of voices and sentences (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="synthesis processes (default 2)")
    parser.set_defaults(run=_run_corpus)


def _run_corpus(args) -> None:
    from fastattn_train.corpus.build import build_corpus

    manifest = build_corpus(args.root, speakers=args.speakers, utterances_per_speaker=args.utterances,
                            seed=args.seed, workers=args.workers)
    print(json.dumps({key: manifest[key] for key in ("splits", "seconds") if key in manifest}, indent=1))


def _add_corpus_arguments(parser) -> None:
    parser.add_argument("corpus", type=Path, help="a LibriSpeech-layout corpus (e.g. built by `fastattn corpus`)")
    parser.add_argument("--deltas", action="store_true", help="append deltas and delta-deltas (240 features)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="feature cache folder (default: $XDG_CACHE_HOME/fastattn_train/features)")


def _pretrain_parser(commands) -> None:
    parser = commands.add_parser(
        "pretrain", help="pre-train an Audio ALBERT encoder with the masked acoustic model",
        description="Pre-train on the train split of a corpus. Resumes from OUT_DIR/checkpoint.pt when it "
                    "exists (a killed run resumed ends where an uninterrupted one ends). Writes log.jsonl "
                    "(and TensorBoard events when tensorboard is installed). Multi-GPU and multi-node: "
                    "launch with torchrun.")
    _add_corpus_arguments(parser)
    parser.add_argument("--config", default="tiny",
                        help="a YAML file, or the name of a bundled one: tiny (CPU) or paper (default tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, dotted for sections (model.attention=strided, "
                             "optim.lr=1e-4, max_steps=100); the value is read as YAML; repeatable")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the config's out_dir)")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint instead of resuming")
    parser.set_defaults(run=_run_pretrain)


def _run_pretrain(args) -> None:
    from fastattn_train.settings import pretrain_config
    from fastattn_train.dataset import collate
    from fastattn_train.pretrain import pretrain

    config = pretrain_config(args.config, args.overrides)
    if args.out is not None:
        config.out_dir = str(args.out)
    train = _dataset(args, "train")
    print(json.dumps(pretrain(config, train, collate, resume=not args.fresh), indent=1))


def _probe_parser(commands) -> None:
    parser = commands.add_parser(
        "probe", help="the paper's four probes on frozen features of a checkpoint or of log-mel",
        description="Train the four probes (utterance speaker, frame speaker, phoneme with 1 and 2 hidden "
                    "layers) on the train split, select each on dev, and print test accuracy as JSON.")
    _add_corpus_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint written by `fastattn pretrain`")
    source.add_argument("--log-mel", action="store_true", help="probe the input features themselves")
    parser.add_argument("--layer", type=_probe_layer, default="last",
                        help="the checkpoint's features to probe: 'last' (default), a layer's number (0 is the "
                             "embedding), 'weighted' (a softmax-weighted sum of all layers learned with each probe, "
                             "s3prl's featurizer; the results then give each layer's weight) or 'all' (each layer "
                             "alone, and the one best on dev for each probe)")
    parser.add_argument("--window", type=int, default=None,
                        help="frames per piece when extracting a checkpoint's features (default: the length it was "
                             "pre-trained on, so that it never sees a position it was not trained at; 0: whole "
                             "utterances)")
    parser.add_argument("--hidden", type=int, default=768, help="width of the phoneme probes' hidden layers")
    parser.add_argument("--epochs", type=int, default=50, help="most epochs per probe (early stopping on dev)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")
    parser.set_defaults(run=_run_probe)


def _probe_layer(text: str) -> int | str:
    if text in ("last", "weighted", "all"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'last', 'weighted', 'all' or a layer number, got {text!r}") from None


def _run_probe(args) -> None:
    from fastattn_train.dataset import collate
    from fastattn_train.pretrain import load_encoder, trained_length
    from fastattn_train.probes import (ProbeConfig, encoder_features, input_features, probe_device, run_layer_sweep,
                                       run_probes)

    config = ProbeConfig(hidden_size=args.hidden, max_epochs=args.epochs)
    if args.log_mel and (args.layer != "last" or args.window is not None):
        raise SystemExit("fastattn probe: --layer and --window apply to a checkpoint's features, not to --log-mel")
    splits = [_dataset(args, split) for split in ("train", "dev", "test")]
    if args.log_mel:
        results = run_probes(input_features, *splits, collate, config)
    else:
        window = trained_length(args.checkpoint) if args.window is None else (args.window or None)
        encoder = load_encoder(args.checkpoint, probe_device(config))
        results = (run_layer_sweep(encoder, *splits, collate, config, window=window) if args.layer == "all" else
                   run_probes(encoder_features(encoder, args.layer, window), *splits, collate, config))
    text = json.dumps(results, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


def _analyse_parser(commands) -> None:
    parser = commands.add_parser(
        "analyse", help="classify a trained encoder's heads and export a fixed_pattern initialisation",
        description="The paper's attention-map analysis (section 4.3): collect each head's maps on the first "
                    "utterances of a split, classify every head as diagonal, increasing, decreasing or sparse, "
                    "and write roles.json, heads.png (PCA then t-SNE of the maps, coloured by head) and "
                    "fixed_pattern_init.pt, which `fastattn pretrain --set init_fixed_pattern=PATH` starts "
                    "fixed_pattern from.")
    _add_corpus_arguments(parser)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by `fastattn pretrain`")
    parser.add_argument("--out", type=Path, required=True, help="folder for roles.json, heads.png and the init")
    parser.add_argument("--split", default="dev", help="split whose utterances are analysed (default dev)")
    parser.add_argument("--utterances", type=int, default=8, help="utterances to collect maps on (default 8)")
    parser.add_argument("--layer", type=int, default=None, help="layer whose roles are exported (default: last)")
    parser.add_argument("--max-len", type=int, default=1500,
                        help="size of the exported logits: the max_len of the model it will start (default 1500)")
    parser.add_argument("--window", type=int, default=None,
                        help="cut each utterance to its first WINDOW frames (default: the length the checkpoint was "
                             "pre-trained on, so that no map shows a position it was not trained at; 0: whole "
                             "utterances)")
    parser.set_defaults(run=_run_analyse)


def _run_analyse(args) -> None:
    from fastattn_train.analysis import analyse
    from fastattn_train.dataset import collate
    from fastattn_train.pretrain import load_encoder, trained_length

    window = trained_length(args.checkpoint) if args.window is None else (args.window or None)
    summary = analyse(load_encoder(args.checkpoint), _dataset(args, args.split), collate, args.out,
                      utterances=args.utterances, layer=args.layer, max_len=args.max_len, window=window)
    print(json.dumps({"layer": summary["layer"], "roles": summary["roles"]}))


def _report_parser(commands) -> None:
    from fastattn_train.report import experiment

    probes = experiment.cpu_probes()
    parser = commands.add_parser(
        "report", help="compare attention kinds: pre-train, probe and time each; tables and plots",
        description=experiment.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path, nargs="?", default=None,
                        help="a LibriSpeech-layout corpus (default: the bundled eSpeak NG corpus, built in OUT/corpus)")
    parser.add_argument("--out", type=Path, default=Path("runs/report"),
                        help="the report folder (default runs/report); rerunning resumes")
    parser.add_argument("--kinds", default="all",
                        help="comma-separated attention kinds, or all (default all: fifteen models, about 75 minutes "
                             "on 2 CPU cores with the tiny config)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="runs per kind, with different pre-training and probe seeds; the report gives mean "
                             "and spread (default 1)")
    parser.add_argument("--config", default="tiny",
                        help="a YAML file, or the name of a bundled one: tiny (CPU) or paper (default tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for every run, as in `fastattn pretrain`; repeatable")
    parser.add_argument("--steps", type=int, default=None, help="pre-training steps per model (default: the config's)")
    parser.add_argument("--probe-epochs", type=int, default=probes.max_epochs,
                        help=f"most epochs per probe (default {probes.max_epochs}; the probe command's is 50)")
    parser.add_argument("--probe-patience", type=int, default=probes.patience,
                        help=f"epochs without a better dev accuracy before a probe stops (default {probes.patience})")
    parser.add_argument("--probe-lr", type=float, default=probes.lr,
                        help=f"the probes' peak Adam learning rate, decayed linearly to 0 (default {probes.lr})")
    parser.add_argument("--hidden", type=int, default=probes.hidden_size,
                        help=f"width of the phoneme probes' hidden layers (default {probes.hidden_size})")
    parser.add_argument("--timing-length", type=int, default=500, help="T of the Table 1 timing (default 500)")
    parser.add_argument("--timing-batch", type=int, default=None,
                        help="B of the Table 1 timing (default: the config's batch_size)")
    parser.add_argument("--timing-reps", type=int, default=5, help="timed calls per measurement (default 5)")
    parser.add_argument("--deltas", action="store_true", help="append deltas and delta-deltas (240 features)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="pre-training runs at once, one process each (default: 1 on a GPU, else one per torch "
                             "thread up to the number of runs)")
    parser.set_defaults(run=_run_report)


def _run_report(args) -> None:
    import dataclasses
    from fastattn_train.report import ReportSettings, cpu_probes, parse_kinds, run_report

    probes = dataclasses.replace(cpu_probes(), max_epochs=args.probe_epochs, patience=args.probe_patience,
                                 lr=args.probe_lr, hidden_size=args.hidden)
    settings = ReportSettings(out=args.out, kinds=parse_kinds(args.kinds), corpus=args.corpus, config=args.config,
                              overrides=args.overrides, steps=args.steps, seeds=args.seeds, probes=probes,
                              timing_length=args.timing_length, timing_batch=args.timing_batch,
                              timing_reps=args.timing_reps, deltas=args.deltas, jobs=args.jobs)
    run_report(settings)
    print((args.out / "report.md").read_text())


def _main_job_parser(commands) -> None:
    from fastattn_train import main_job

    parser = commands.add_parser(
        "main", help="the main job: the report of full and fixed_pattern on the default corpus",
        description=main_job.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/main"),
                        help="working folder: corpus, runs, report (default runs/main); rerunning resumes")
    parser.add_argument("--kinds", default="full,fixed_pattern",
                        help="comma-separated attention kinds to pre-train (default full,fixed_pattern)")
    parser.add_argument("--steps", type=int, default=main_job.STEPS, help="pre-training steps per model")
    parser.set_defaults(run=_run_main_job)


def _run_main_job(args) -> None:
    from fastattn_train import main_job

    from fastattn_train.report import parse_kinds

    main_job.run(args.out, list(parse_kinds(args.kinds)), steps=args.steps)


def _dataset(args, split: str):
    from fastattn_train.dataset import load_dataset
    from fastattn_train.features import FeatureSettings

    return load_dataset(args.corpus, split, FeatureSettings(deltas=args.deltas), cache_dir=args.cache)


if __name__ == "__main__":
    sys.exit(main())
