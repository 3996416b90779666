"""The `fastattn` command end to end on a tiny corpus it builds: corpus, pretrain, probe and
analyse (the report has its own tests); every sub-command's --help."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("espeakng_loader")
pytest.importorskip("yaml")

import torch  # noqa: E402

from fastattn.nn.fixed_pattern import ROLES  # noqa: E402
from fastattn_train.analysis import load_initialisation  # noqa: E402
from fastattn_train.cli import main  # noqa: E402
from fastattn_train.dataset import load_dataset  # noqa: E402
from fastattn_train.pretrain import load_encoder  # noqa: E402
from fastattn_train.probes import TASKS  # noqa: E402

TINY_MODEL = ["model.hidden_size=16", "model.num_heads=2", "model.ffn_size=32", "model.num_layers=1",
              "batch_size=2", "max_steps=3", "max_frames=100", "log_every=1", "checkpoint_every=3",
              "optim.warmup_steps=0"]


@pytest.mark.parametrize("command", [[], ["corpus"], ["pretrain"], ["probe"], ["analyse"], ["report"], ["main"]])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: fastattn" in capsys.readouterr().out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "corpus"
    main(["corpus", str(root), "--speakers", "3", "--utterances", "6"])
    return root


def overrides(settings: list[str]) -> list[str]:
    return [arg for setting in settings for arg in ("--set", setting)]


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory):
    """(run folder, feature cache) of a 3-step tiny pre-training through the command."""
    run, cache = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("cache")
    main(["pretrain", str(corpus), "--cache", str(cache), "--out", str(run), *overrides(TINY_MODEL)])
    return run, cache


def test_pretrain_then_probe(corpus, pretrained, tmp_path):
    run, cache = pretrained
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3] and (run / "checkpoint.pt").exists()
    results = tmp_path / "probes.json"
    main(["probe", str(corpus), "--cache", str(cache), "--checkpoint", str(run / "checkpoint.pt"),
          "--hidden", "16", "--epochs", "2", "--out", str(results)])
    assert set(json.loads(results.read_text())["test"]) == set(TASKS)
    # every layer at once, weighted: one weight per hidden state (embedding included) and task
    main(["probe", str(corpus), "--cache", str(cache), "--checkpoint", str(run / "checkpoint.pt"),
          "--layer", "weighted", "--hidden", "16", "--epochs", "2", "--out", str(results)])
    weights = json.loads(results.read_text())["layer_weights"]
    layers = load_encoder(run / "checkpoint.pt").config.num_layers
    assert set(weights) == set(TASKS) and all(len(w) == layers + 1 and abs(sum(w) - 1) < 1e-5 for w in weights.values())
    main(["probe", str(corpus), "--cache", str(cache), "--checkpoint", str(run / "checkpoint.pt"),
          "--window", "0", "--hidden", "16", "--epochs", "1", "--out", str(results)])  # whole utterances
    assert set(json.loads(results.read_text())["test"]) == set(TASKS)
    # each layer alone, and the best on dev per probe
    main(["probe", str(corpus), "--cache", str(cache), "--checkpoint", str(run / "checkpoint.pt"),
          "--layer", "all", "--hidden", "16", "--epochs", "1", "--out", str(results)])
    sweep = json.loads(results.read_text())
    assert sorted(sweep["layers"], key=int) == [str(layer) for layer in range(layers + 1)]
    assert set(sweep["best_on_dev"]) == set(TASKS)
    assert all(0 <= best["layer"] <= layers for best in sweep["best_on_dev"].values())
    with pytest.raises(ValueError, match="layer must be"):
        main(["probe", str(corpus), "--cache", str(cache), "--checkpoint", str(run / "checkpoint.pt"),
              "--layer", str(layers + 1), "--epochs", "1"])


def test_analyse_then_start_fixed_pattern_from_it(corpus, pretrained, tmp_path):
    run, cache = pretrained
    analysis = tmp_path / "analysis"
    main(["analyse", str(corpus), "--cache", str(cache), "--checkpoint", str(run / "checkpoint.pt"),
          "--out", str(analysis), "--utterances", "3", "--max-len", "1200", "--window", "40"])
    roles = json.loads((analysis / "roles.json").read_text())["roles"]
    assert len(roles) == 2 and set(roles) <= set(ROLES) and (analysis / "heads.png").stat().st_size > 0
    init = analysis / "fixed_pattern_init.pt"
    started = tmp_path / "started"
    # Learning rates of ~0 (the logits have their own) keep the weights where the initialisation put them.
    main(["pretrain", str(corpus), "--cache", str(cache), "--out", str(started),
          *overrides([*TINY_MODEL, "model.attention=fixed_pattern", "model.max_len=1200", f"init_fixed_pattern={init}",
                      "optim.lr=1e-12", "optim.logits_lr=1e-12", "optim.weight_decay=0"])])
    logits = next(m.logits for m in load_encoder(started / "checkpoint.pt").modules() if hasattr(m, "logits"))
    torch.testing.assert_close(logits, load_initialisation(init))


def test_log_mel_probes_beat_chance_on_a_built_corpus(corpus, tmp_path):
    results = tmp_path / "probes.json"
    main(["probe", str(corpus), "--cache", str(tmp_path), "--log-mel", "--hidden", "64", "--epochs", "8",
          "--out", str(results)])
    accuracy = json.loads(results.read_text())["test"]
    train = load_dataset(corpus, "train", cache_dir=tmp_path)
    phones = [int(p) for item in train for p in item["phones"]]
    most_common = max(phones.count(p) for p in set(phones)) / len(phones)
    assert accuracy["speaker_frame"] > 1.5 / len(train.speakers)
    assert accuracy["phone_1hidden"] > 1.5 * most_common
