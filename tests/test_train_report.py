"""`fastattn report` on a tiny corpus it builds: every file written, mean and spread over
seeds, resume without redoing finished work, redoing only what a change made stale; the
tables' arithmetic and wording; settings that are refused."""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
import torch

pytest.importorskip("espeakng_loader")
pytest.importorskip("yaml")
pytest.importorskip("matplotlib")

from fastattn.nn import KINDS  # noqa: E402
from fastattn.nn.fixed_pattern import ROLES  # noqa: E402
from fastattn_train.checkpoint import load_checkpoint  # noqa: E402
from fastattn_train.cli import main  # noqa: E402
from fastattn_train.probes import TASKS  # noqa: E402
from fastattn_train.report import BASELINE, ReportSettings, parse_kinds, phoneme_verdicts  # noqa: E402
from fastattn_train.report.summary import markdown, paper_inference_ratio, spread, timing_table, weighted_row  # noqa: E402

TINY = ["model.hidden_size=16", "model.num_heads=2", "model.ffn_size=32", "model.num_layers=2", "batch_size=2",
        "max_frames=100", "log_every=1", "checkpoint_every=2", "optim.warmup_steps=0", "progress=false"]
KINDS_RUN = ("full", "fixed_pattern")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "corpus"
    main(["corpus", str(root), "--speakers", "3", "--utterances", "6"])
    return root


def report_command(corpus, out, *, kinds=KINDS_RUN, seeds: int = 2, steps: int = 3, probe_epochs: int = 2,
                   timing_reps: int = 1, extra=(), settings=TINY) -> list[str]:
    return ["report", str(corpus), "--out", str(out), "--kinds", ",".join(kinds), "--seeds", str(seeds),
            "--steps", str(steps), "--probe-epochs", str(probe_epochs), "--hidden", "16", "--timing-length", "120",
            "--timing-reps", str(timing_reps), *extra, *[arg for setting in settings for arg in ("--set", setting)]]


@pytest.fixture(scope="module")
def report(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    main(report_command(corpus, out, extra=["--jobs", "2"]))  # the runs two at a time, in processes
    return out


def modification_times(out) -> dict[str, int]:
    return {str(path.relative_to(out)): path.stat().st_mtime_ns
            for folder in ("runs", "probes", "timing") for path in sorted((out / folder).rglob("*")) if path.is_file()}


def test_report_writes_every_file(report):
    expected = ["report.md", "report.json", "accuracy_vs_time.png", "loss_curves.png",
                *[f"attention_maps/{kind}.png" for kind in KINDS_RUN],
                *[f"timing/{kind}.json" for kind in KINDS_RUN],
                *[f"runs/{kind}/seed{seed}/{name}" for kind in KINDS_RUN for seed in (0, 1)
                  for name in ("checkpoint.pt", "log.jsonl")],
                *[f"probes/{row}/seed{seed}.json" for row in (BASELINE, *KINDS_RUN) for seed in (0, 1)]]
    for name in expected:
        assert (report / name).is_file(), name
    for picture in report.rglob("*.png"):
        assert picture.read_bytes()[:8] == PNG, picture
    written = json.loads((report / "report.json").read_text())
    assert set(written["plots"].values()) == {name for name in expected if name.endswith(".png")}


def test_report_gives_mean_and_spread_over_seeds(report):
    written = json.loads((report / "report.json").read_text())
    assert list(written["accuracy"]) == [BASELINE, *(row for kind in KINDS_RUN for row in (kind, weighted_row(kind)))]
    for row, tasks in written["accuracy"].items():
        for task in TASKS:
            folder = row.replace(" (weighted layers)", "-weighted")
            values = [json.loads((report / "probes" / folder / f"seed{seed}.json").read_text())["test"][task]
                      for seed in (0, 1)]
            assert tasks[task]["values"] == values
            assert tasks[task]["mean"] == pytest.approx(statistics.fmean(values))
            assert tasks[task]["std"] == pytest.approx(statistics.stdev(values))
    # The seeds are really different runs.
    seeds = [load_checkpoint(report / "runs" / "full" / f"seed{seed}" / "checkpoint.pt")["config"]["seed"]
             for seed in (0, 1)]
    assert seeds == [0, 1]
    text = (report / "report.md").read_text()
    assert "±" in text and "over 2 seeds" in text


def test_report_gives_the_weighted_layers_row_and_its_learned_weights(report):
    written = json.loads((report / "report.json").read_text())
    for kind in KINDS_RUN:
        assert len(written["layer_weights"][kind]) == 2  # one per seed
        for weights in written["layer_weights"][kind]:
            assert set(weights) == set(TASKS) and all(abs(sum(w) - 1) < 1e-5 for w in weights.values())
    text = (report / "report.md").read_text()
    assert f"| {weighted_row(KINDS_RUN[0])} |" in text and "Learned layer weights" in text


def test_report_compares_every_run_with_the_trivial_predictors(report):
    written = json.loads((report / "report.json").read_text())
    for kind in KINDS_RUN:
        for run in written["pretraining"][kind]:
            assert set(run["recent_trivial_l1"]) == {"utterance_mean", "interpolation"}
            assert run["beats"] == {name: run["recent_loss"] < value for name, value in run["recent_trivial_l1"].items()}
    text = (report / "report.md").read_text()
    section = text[text.index("## Pre-training against trivial predictors"):]
    assert all(f"| {kind} | {seed} |" in section for kind in KINDS_RUN for seed in (0, 1))


def test_report_tables_name_the_device_and_compare_times_with_full(report):
    written = json.loads((report / "report.json").read_text())
    timing = written["timing"]
    assert timing["full"]["train_vs_full"] == 1.0 and timing["full"]["inference_vs_full"] == 1.0
    for kind in KINDS_RUN:
        measured = json.loads((report / "timing" / f"{kind}.json").read_text())
        assert (measured["length"], measured["batch"]) == (120, 2)
        assert timing[kind]["inference_vs_full"] == pytest.approx(
            measured["inference_s"] / timing["full"]["inference_s"])
        assert len(written["pretraining"][kind]) == 2
        assert all(run["step"] == 3 for run in written["pretraining"][kind])
    text = (report / "report.md").read_text()
    assert written["setup"]["device"] in text
    for heading in ("the paper's Table 2 layout", "the paper's Table 1 layout", "The paper's Table 2"):
        assert heading in text
    for kind in (BASELINE, *KINDS_RUN):
        assert f"| {kind} |" in text


def test_report_classifies_every_head_of_every_kind(report):
    roles = json.loads((report / "report.json").read_text())["head_roles"]
    assert list(roles) == list(KINDS_RUN)
    for layers in roles.values():
        assert list(layers) == ["0", "1"]
        assert all(len(heads) == 2 and set(heads) <= set(ROLES) for heads in layers.values())
    assert "## Head roles" in (report / "report.md").read_text()


def test_rerun_reuses_every_finished_stage(corpus, report):
    before = modification_times(report)
    first = json.loads((report / "report.json").read_text())
    main(report_command(corpus, report))
    assert modification_times(report) == before
    assert json.loads((report / "report.json").read_text())["accuracy"] == first["accuracy"]


def logged_losses(out, seed: int) -> list[dict]:
    """fixed_pattern's log of one seed without its clock readings."""
    log = (out / "runs" / "fixed_pattern" / f"seed{seed}" / "log.jsonl").read_text().splitlines()
    return [{key: value for key, value in json.loads(line).items() if key not in ("frames_per_s", "seconds")}
            for line in log]


def test_runs_in_parallel_processes_equal_runs_in_turn(corpus, report, tmp_path):
    # The fixture's runs went two at a time, each process on half of this one's threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))
    try:
        main(report_command(corpus, tmp_path / "out", kinds=["fixed_pattern"], extra=["--jobs", "1"]))
    finally:
        torch.set_num_threads(threads)
    for seed in (0, 1):
        in_turn, parallel = (load_checkpoint(out / "runs" / "fixed_pattern" / f"seed{seed}" / "checkpoint.pt")
                             for out in (tmp_path / "out", report))
        assert in_turn["step"] == parallel["step"] == 3
        for name, tensor in parallel["encoder"].items():
            assert torch.equal(in_turn["encoder"][name], tensor), name
        assert logged_losses(tmp_path / "out", seed) == logged_losses(report, seed)


def changed(before: dict, after: dict) -> set[str]:
    """The top folders (runs/full, probes/log-mel, timing, ...) holding a file that changed."""
    return {"/".join(name.split("/")[:1 if name.startswith("timing") else 2])
            for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


def test_a_change_redoes_only_what_it_made_stale(corpus, report, tmp_path):
    out = tmp_path / "out"
    main(report_command(corpus, out, steps=2))
    before = modification_times(out)
    main(report_command(corpus, out, steps=3))  # more steps: the runs go on, their probes are redone
    after = modification_times(out)
    assert changed(before, after) == {f"{folder}/{kind}{suffix}" for kind in KINDS_RUN
                                      for folder, suffix in (("runs", ""), ("probes", ""), ("probes", "-weighted"))}
    for seed in (0, 1):
        for kind in KINDS_RUN:
            probes = json.loads((out / "probes" / kind / f"seed{seed}.json").read_text())
            assert probes["checkpoint"]["step"] == 3
            assert load_checkpoint(out / "runs" / kind / f"seed{seed}" / "checkpoint.pt")["step"] == 3
    # Resumed, not restarted: one log of three steps, whose first two (taken before the longer
    # schedule changed the learning rate) match a run that went to 3 steps at once.
    resumed = [json.loads(line) for line in (out / "runs" / "full" / "seed0" / "log.jsonl").read_text().splitlines()]
    fresh = [json.loads(line) for line in (report / "runs" / "full" / "seed0" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in resumed] == [1, 2, 3]
    assert [entry["loss"] for entry in resumed[:2]] == [entry["loss"] for entry in fresh[:2]]

    main(report_command(corpus, out, probe_epochs=1))  # other probes: every row's probes, nothing else
    again = modification_times(out)
    assert changed(after, again) == {f"probes/{row}" for row in (BASELINE, *KINDS_RUN,
                                                                 *(f"{kind}-weighted" for kind in KINDS_RUN))}
    main(report_command(corpus, out, probe_epochs=1, timing_reps=2))  # other timing: the timing only
    assert changed(again, modification_times(out)) == {"timing"}


def test_a_folder_refuses_other_data_and_runs_trained_otherwise(corpus, report):
    with pytest.raises(ValueError, match="holds a report on other data"):
        main(report_command(corpus, report, extra=["--deltas"]))
    with pytest.raises(ValueError, match="trained with other settings.*optim"):
        main(report_command(corpus, report, settings=[*TINY, "optim.lr=0.5"]))


def test_deltas_and_a_max_len_below_the_timed_length(corpus, tmp_path):
    out = tmp_path / "out"
    main(report_command(corpus, out, kinds=["full"], seeds=1, steps=1, extra=["--deltas"],
                        settings=[*TINY, "model.max_len=1500"]))
    assert load_checkpoint(out / "runs" / "full" / "seed0" / "checkpoint.pt")["config"]["model"]["input_dim"] == 240
    timing = json.loads((out / "timing" / "full.json").read_text())
    assert timing["model"]["max_len"] == 1500
    main(report_command(corpus, tmp_path / "long", kinds=["full"], seeds=1, steps=1, extra=["--timing-length", "2000"],
                        settings=[*TINY, "model.max_len=1500"]))
    assert json.loads((tmp_path / "long" / "timing" / "full.json").read_text())["model"]["max_len"] == 2000
    with pytest.raises(ValueError, match="below the longest utterance"):
        main(report_command(corpus, tmp_path / "short", kinds=["full"], seeds=1, steps=1,
                            settings=[*TINY, "model.max_len=100"]))


def test_a_corpus_without_phone_labels_reports_the_speaker_probes(corpus, tmp_path):
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(corpus, unlabelled, ignore=shutil.ignore_patterns("phones"))
    out = tmp_path / "out"
    main(report_command(unlabelled, out, kinds=["full"], seeds=1, steps=1))
    accuracy = json.loads((out / "report.json").read_text())["accuracy"]
    assert accuracy["full"]["phone_1hidden"] is None and accuracy["full"]["speaker_frame"] is not None
    assert "not measured (the corpus has no phone labels)" in (out / "report.md").read_text()


def test_kinds_all_names_every_kind():
    assert parse_kinds("all") == KINDS
    assert parse_kinds(" full, strided ") == ("full", "strided")


@pytest.mark.parametrize("changes, message", [
    ({"kinds": ("full", "dense")}, "unknown attention kind.*'dense'"),
    ({"kinds": ()}, "at least one"),
    ({"kinds": ("full", "full")}, "must not repeat"),
    ({"seeds": 0}, "seeds must be a positive integer"),
    ({"steps": 0}, "steps must be a positive integer or None"),
    ({"jobs": 0}, "jobs must be a positive integer or None"),
    ({"timing_length": -1}, "timing_length"),
    ({"overrides": ("model.attention=strided",)}, "may not set"),
    ({"overrides": ("seed=3",)}, "may not set"),
])
def test_bad_settings_are_refused_naming_what_is_wrong(changes, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        ReportSettings(**{"out": tmp_path, "kinds": ("full",), **changes})


def test_spread_and_ratios():
    assert spread([0.5]) == {"mean": 0.5, "std": 0.0, "values": [0.5]}
    assert spread([0.4, 0.6])["std"] == pytest.approx(0.1414213562)
    assert spread([0.4, None]) is None
    timing = {"full": {"train_step_s": 2.0, "inference_s": 1.0}, "strided": {"train_step_s": 1.0, "inference_s": 0.25}}
    runs = {kind: [{"seconds": 10.0}, {"seconds": 12.0}] for kind in timing}
    rows = timing_table(timing, runs)
    assert (rows["strided"]["train_vs_full"], rows["strided"]["inference_vs_full"]) == (0.5, 0.25)
    assert rows["strided"]["pretraining_s"]["mean"] == 11.0
    # Without a full row there is nothing to divide by.
    assert timing_table({"strided": timing["strided"]}, runs)["strided"]["train_vs_full"] is None
    assert paper_inference_ratio("fixed_pattern") == pytest.approx(116.8 / 146.8)
    low, high = paper_inference_ratio("xbox")
    assert 1.5 < low < high < 1.9
    assert paper_inference_ratio("performer") is None


def test_report_says_plainly_whether_pretraining_beat_log_mel():
    def row(one, two):
        return {"phone_1hidden": spread([one]), "phone_2hidden": spread([two])}

    accuracy = {BASELINE: row(0.5, 0.6), "full": row(0.55, 0.65), "fixed_pattern": row(0.45, 0.65)}
    verdicts = phoneme_verdicts(accuracy, ["full", "fixed_pattern"])
    assert verdicts[0] == "full: pre-trained features beat log-mel on both phoneme probes."
    assert verdicts[1] == "fixed_pattern: pre-trained features did NOT beat log-mel on phoneme (1 hidden)."


def test_markdown_renders_a_report_read_back_from_json(report):
    written = json.loads((report / "report.json").read_text())
    assert markdown(written) == (report / "report.md").read_text()
