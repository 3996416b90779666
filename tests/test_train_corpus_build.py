"""The eSpeak NG corpus builder: layout, labels, splits, determinism across worker counts."""

import json

import pytest

pytest.importorskip("espeakng_loader")

from fastattn_train.corpus.build import SPLITS, build_corpus  # noqa: E402
from fastattn_train.corpus.frames import SILENCE, num_frames  # noqa: E402
from fastattn_train.corpus.librispeech import read_split  # noqa: E402

SPEAKERS, UTTERANCES = 3, 4


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """The same tiny corpus built with one worker and with two."""
    roots = {}
    for workers in (1, 2):
        roots[workers] = tmp_path_factory.mktemp(f"workers{workers}") / "corpus"
        build_corpus(roots[workers], speakers=SPEAKERS, utterances_per_speaker=UTTERANCES,
                     seed=7, workers=workers)
    return roots


def test_identical_bytes_for_one_and_two_workers(corpora):
    files = {w: sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
             for w, root in corpora.items()}
    assert files[1] == files[2]
    assert len([f for f in files[1] if f.suffix == ".wav"]) == SPEAKERS * UTTERANCES
    for relative in files[1]:
        assert (corpora[1] / relative).read_bytes() == (corpora[2] / relative).read_bytes(), relative


def test_reader_reads_every_split_with_one_label_per_frame(corpora):
    root = corpora[1]
    speakers_by_split, ids = {}, set()
    for split in SPLITS:
        utterances, skips = read_split(root, split)
        assert len(skips) == 0
        for u in utterances:
            assert len(u.phones) == num_frames(u.num_samples)
            assert u.num_samples > 16000 // 2  # a sentence lasts more than half a second
            assert SILENCE in u.phones and not any(p.startswith(("ˈ", "ˌ")) for p in u.phones)
        speakers_by_split[split] = {u.speaker for u in utterances}
        ids |= {u.id for u in utterances}
    assert len(ids) == SPEAKERS * UTTERANCES
    # Splits are by utterance: every speaker is in every split.
    assert speakers_by_split["train"] == speakers_by_split["dev"] == speakers_by_split["test"]
    assert len(speakers_by_split["train"]) == SPEAKERS


def test_manifest_describes_the_corpus(corpora):
    manifest = json.loads((corpora[1] / "manifest.json").read_text())
    assert manifest["skipped"] == []
    assert {s: v["utterances"] for s, v in manifest["splits"].items()} == {
        "train": 2 * SPEAKERS, "dev": SPEAKERS, "test": SPEAKERS}
    assert len(manifest["voices"]) == SPEAKERS
    assert len({json.dumps(v["formants"]) for v in manifest["voices"].values()}) == SPEAKERS
    assert SILENCE in manifest["phones"] and len(manifest["phones"]) > 20
    first = manifest["utterances"][0]
    assert (corpora[1] / first["path"]).is_file() and first["text"]


def test_rejects_sizes_that_leave_a_split_empty_and_nonempty_roots(tmp_path, corpora):
    with pytest.raises(ValueError, match="utterances_per_speaker=2"):
        build_corpus(tmp_path / "small", speakers=1, utterances_per_speaker=2)
    with pytest.raises(FileExistsError, match="root"):
        build_corpus(corpora[1], speakers=1, utterances_per_speaker=3)


def test_failed_utterances_are_skipped_and_listed(tmp_path, monkeypatch):
    from fastattn_train.corpus import build

    synthesize = build._synthesize

    def fail_one(espeak, job):
        if job.id == "100-2-0001":  # the one dev utterance
            raise RuntimeError("simulated synthesis failure")
        return synthesize(espeak, job)

    monkeypatch.setattr(build, "_synthesize", fail_one)  # children are forked: they see the patch
    manifest = build_corpus(tmp_path / "corpus", speakers=1, utterances_per_speaker=3)
    assert manifest["skipped"] == [
        {"what": "100-2-0001", "reason": "synthesis failed: RuntimeError: simulated synthesis failure"}]
    assert manifest["splits"]["dev"]["utterances"] == 0
    assert [len(read_split(tmp_path / "corpus", s)[0]) for s in SPLITS] == [1, 0, 1]
