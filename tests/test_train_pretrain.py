"""fastattn_train.pretrain: the loss falls, a killed run resumes bit for bit, checkpoints
are written atomically, and the YAML configs load strictly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from fastattn.nn import AudioALBERT, AudioALBERTConfig, input_independent_logits
from fastattn_train import trivial_predictors
from fastattn_train.checkpoint import load_checkpoint, save_checkpoint, write_atomically
from fastattn_train.masking import MaskingConfig
from fastattn_train.pretrain import (OptimConfig, PretrainConfig, config_from_dict, load_config, load_encoder,
                                     lr_factor, make_optimizer, pretrain)
from train_cases import SyntheticSpeech, collate

CONFIGS = Path(__file__).parent.parent / "train" / "fastattn_train" / "configs"


def tiny_config(out_dir, **changes) -> PretrainConfig:
    return dataclasses.replace(PretrainConfig(
        model=AudioALBERTConfig.tiny(input_dim=12, hidden_size=24, num_heads=2, ffn_size=48),
        optim=OptimConfig(lr=3e-3, warmup_steps=4, decay="cosine"),
        batch_size=8, max_steps=12, max_frames=40, log_every=1, checkpoint_every=4, seed=3,
        out_dir=str(out_dir), progress=False), **changes)


def losses(out_dir) -> list[tuple[int, float]]:
    return [(entry["step"], entry["loss"]) for entry in map(json.loads, (Path(out_dir) / "log.jsonl").open())]


class KilledAfter(torch.utils.data.Dataset):
    """The dataset, until `items` have been read: then the run dies as if killed."""

    def __init__(self, dataset, items: int):
        self.dataset, self.left = dataset, items
        self.feature_dim = dataset.feature_dim

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        if self.left == 0:
            raise KeyboardInterrupt("simulated kill")
        self.left -= 1
        return self.dataset[index]


def test_loss_falls(tmp_path):
    # phones in runs of 10 and little noise: a masked span is mostly its neighbours' phone
    data = SyntheticSpeech(48, seed=0, noise=0.3, run=10)
    config = tiny_config(tmp_path, max_steps=200, checkpoint_every=200, optim=OptimConfig(lr=1e-2, warmup_steps=10))
    result = pretrain(config, data, collate)
    logged = [loss for _, loss in losses(tmp_path)]
    assert len(logged) == 200 and result["step"] == 200 and result["loss"] == logged[-1]
    first, last = sum(logged[:10]) / 10, sum(logged[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    encoder = load_encoder(result["checkpoint"])
    assert not encoder.training and encoder.config.hidden_size == 24
    batch = collate([data[0], data[1]])
    hidden = encoder(batch["features"], batch["key_padding_mask"]).last_hidden_state
    assert hidden.shape == (2, batch["features"].shape[1], 24) and not hidden.requires_grad
    assert load_config(tmp_path / "config.yaml") == config  # the run's record of itself reads back


def test_killed_run_resumes_bitwise(tmp_path):
    # 40 utterances in batches of 8: 5 batches per epoch, so the 12 steps cross two epoch ends.
    data = SyntheticSpeech(40, seed=1)
    whole = pretrain(tiny_config(tmp_path / "whole"), data, collate)

    killed = tiny_config(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):  # dies while loading step 7's batch; last checkpoint at step 4
        pretrain(killed, KilledAfter(data, 6 * 8 + 3), collate)
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["step"] == 4
    assert [step for step, _ in losses(tmp_path / "killed")] == [1, 2, 3, 4, 5, 6]
    resumed = pretrain(killed, data, collate)

    assert losses(tmp_path / "whole") == losses(tmp_path / "killed")  # steps 5, 6 logged once, identically
    assert whole["loss"] == resumed["loss"]
    a, b = load_checkpoint(whole["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    for part in ("encoder", "head"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name}"
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(x["exp_avg_sq"], y["exp_avg_sq"])
    assert a["step"] == b["step"] == 12


def test_stale_tmp_file_never_replaces_a_good_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 4, "weights": torch.ones(3)}, path)

    def crash(file):
        file.write(b"partial garbage")
        raise OSError("disk full")

    with pytest.raises(OSError):  # a crash in the middle of the next write ...
        write_atomically(path, crash)
    assert (tmp_path / "checkpoint.pt.tmp").exists()  # ... leaves a partial temporary file beside it
    assert load_checkpoint(path)["step"] == 4
    save_checkpoint({"step": 8, "weights": torch.zeros(3)}, path)
    assert load_checkpoint(path)["step"] == 8 and not (tmp_path / "checkpoint.pt.tmp").exists()

    # and a resumed run reads the good checkpoint, not the stale file
    data = SyntheticSpeech(16, seed=2)
    config = tiny_config(tmp_path / "run", max_steps=4, checkpoint_every=2)
    pretrain(config, data, collate)
    (tmp_path / "run" / "checkpoint.pt.tmp").write_bytes(b"partial garbage")
    result = pretrain(dataclasses.replace(config, max_steps=6), data, collate)
    assert result["step"] == 6 and [step for step, _ in losses(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]


def test_rerunning_a_finished_run_leaves_its_files_untouched(tmp_path):
    data = SyntheticSpeech(16, seed=2)
    config = tiny_config(tmp_path, max_steps=3, checkpoint_every=3)
    first = pretrain(config, data, collate)
    files = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in tmp_path.iterdir() if path.is_file()}
    again = pretrain(config, data, collate)
    assert again == first
    assert {path.name: (path.stat().st_mtime_ns, path.read_bytes())
            for path in tmp_path.iterdir() if path.is_file()} == files


@pytest.mark.parametrize("name", ["paper.yaml", "tiny.yaml"])
def test_yaml_configs_load(name):
    config = load_config(CONFIGS / name)
    assert isinstance(config.optim.betas, tuple) and isinstance(config.masking, MaskingConfig)
    assert config.masking.span == 7 and config.masking.fraction == 0.15
    if name == "paper.yaml":
        model = config.model
        assert (model.num_layers, model.hidden_size, model.num_heads, model.ffn_size, model.dropout) == (
            6, 768, 12, 3072, 0.1)


def test_unknown_and_bad_keys_are_named():
    with pytest.raises(ValueError, match="lrr.*section 'optim'"):
        config_from_dict({"optim": {"lrr": 1e-3}})
    with pytest.raises(ValueError, match="batchsize"):
        config_from_dict({"batchsize": 4})
    with pytest.raises(ValueError, match="max_frames"):
        config_from_dict({"model": {"attention": "fixed_pattern", "max_len": 100}})
    with pytest.raises(ValueError, match="optim.decay"):
        config_from_dict({"optim": {"decay": "step"}})
    with pytest.raises(ValueError, match="optim.logits_lr"):
        config_from_dict({"optim": {"logits_lr": 0}})


@pytest.mark.parametrize("attention", ["fixed_pattern", "synth_random", "full"])
def test_attention_logits_get_their_own_learning_rate_and_no_weight_decay(attention):
    model = AudioALBERT(AudioALBERTConfig.tiny(input_dim=12, hidden_size=24, num_heads=4, ffn_size=48,
                                               attention=attention, max_len=32, share_layers=False))
    optim = OptimConfig(lr=1e-3, logits_lr=0.05, weight_decay=0.1, warmup_steps=10)
    optimizer = make_optimizer(model, optim)
    logits = {id(p) for p in input_independent_logits(model)}
    assert len(logits) == (0 if attention == "full" else model.config.num_layers)
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter once
    for group in optimizer.param_groups:
        members = {id(p) for p in group["params"]}
        if members & logits:
            assert members == logits and group["lr"] == 0.05 and group["weight_decay"] == 0.0
        else:
            assert group["lr"] == 1e-3
            assert group["weight_decay"] == (0.1 if all(p.dim() >= 2 for p in group["params"]) else 0.0)
    assert len(optimizer.param_groups) == (2 if attention == "full" else 3)
    # the warm-up scales every group alike
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(optim, 100))
    assert [group["lr"] for group in optimizer.param_groups][-1] == pytest.approx(
        (1e-3 if attention == "full" else 0.05) * scheduler.lr_lambdas[0](0))


def test_a_kind_with_max_len_trains_on_cropped_batches(tmp_path):
    model = AudioALBERTConfig.tiny(input_dim=12, hidden_size=24, num_heads=4, ffn_size=48,
                                   attention="fixed_pattern", max_len=32)
    result = pretrain(tiny_config(tmp_path, model=model, max_frames=32, max_steps=3), SyntheticSpeech(16, 4), collate)
    assert result["step"] == 3 and result["loss"] > 0


def test_convolutional_positions_train_and_reload(tmp_path):
    model = AudioALBERTConfig.tiny(input_dim=12, hidden_size=24, num_heads=2, ffn_size=48, conv_positions=5,
                                   conv_position_groups=4)
    data = SyntheticSpeech(16, 4)
    result = pretrain(tiny_config(tmp_path, model=model, max_steps=3), data, collate)
    encoder = load_encoder(result["checkpoint"])
    assert encoder.encoder.conv_positions.kernel_size == (5,) and encoder.encoder.conv_positions.groups == 4
    assert load_config(tmp_path / "config.yaml") == tiny_config(tmp_path, model=model, max_steps=3)


def test_feature_width_mismatch_is_named(tmp_path):
    with pytest.raises(ValueError, match="input_dim"):
        pretrain(tiny_config(tmp_path, model=AudioALBERTConfig.tiny(input_dim=13)), SyntheticSpeech(8, 0), collate)

def test_pretraining_logs_the_trivial_predictors_on_its_masks(tmp_path):
    pretrain(tiny_config(tmp_path, max_steps=4), SyntheticSpeech(16, 4), collate)
    entries = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(entries) == 4
    for entry in entries:
        for name in trivial_predictors.NAMES:
            assert entry[f"{name}_l1"] > 0
