"""Readers of LibriSpeech-layout corpora and of frame phone labels (s3prl files, TextGrids)."""

import pytest

from fastattn_train.corpus.frames import SILENCE, num_frames
from fastattn_train.corpus.librispeech import read_split
from fastattn_train.corpus.textgrid import read_textgrid
from train_speech_fixtures import write_tone, write_two_speaker_corpus


def test_reads_layout_speakers_from_path_and_s3prl_labels(tmp_path):
    write_two_speaker_corpus(tmp_path)
    utterances, skips = read_split(tmp_path, "train")
    assert len(skips) == 0
    assert [u.id for u in utterances] == ["11-1-0000", "11-1-0001", "22-5-0000", "22-5-0001"]
    assert [u.speaker for u in utterances] == ["11", "11", "22", "22"]
    assert {u.audio_path.suffix for u in utterances} == {".wav", ".flac"}
    first = utterances[1]
    assert (first.split, first.num_samples) == ("train", 6401)
    assert len(first.phones) == num_frames(6401) == 41
    assert first.phones[:2] == ("sil", "hi")


def test_without_labels_phones_are_none(tmp_path):
    write_two_speaker_corpus(tmp_path)
    (tmp_path / "phones" / "dev.txt").unlink()
    utterances, skips = read_split(tmp_path, "dev")
    assert len(utterances) == 2 and len(skips) == 0
    assert all(u.phones is None for u in utterances)


def test_bad_data_is_skipped_counted_and_explained(tmp_path):
    write_two_speaker_corpus(tmp_path)
    chapter = tmp_path / "train" / "11" / "1"
    (chapter / "11-1-0002.flac").write_bytes(b"not audio at all")
    write_tone(chapter / "11-1-0003.wav", 0, 440.0)
    write_tone(chapter / "11-1-0004.wav", 4000, 440.0, sample_rate=8000)
    write_tone(chapter / "11-1-0005.wav", 4000, 440.0)  # no label line
    write_tone(chapter / "99-1-0006.wav", 4000, 440.0)  # name disagrees with its folder
    write_tone(chapter / "11-1-0007.wav", 4000, 440.0)
    with open(tmp_path / "phones" / "train.txt", "a") as labels:
        labels.write("11-1-0007 " + "lo " * (num_frames(4000) + 1) + "\n")  # one label too many
        labels.write("11-1-0008\n")  # an id without labels
    utterances, skips = read_split(tmp_path, "train")
    assert len(utterances) == 4
    reasons = " | ".join(f"{s.what}: {s.reason}" for s in skips.entries)
    assert len(skips) == 7, reasons
    for expected in ["unreadable audio", "empty audio", "sample rate 8000", "no frame labels for",
                     "not <speaker>-<chapter>-<utt>", "27 frame labels for 26 audio frames",
                     "has no frame labels"]:
        assert expected in reasons


def test_frame_tolerance_trims_and_pads(tmp_path):
    write_two_speaker_corpus(tmp_path)
    labels = tmp_path / "phones" / "dev.txt"
    lines = labels.read_text().splitlines()
    lines[0] += " extra"  # one label too many
    lines[1] = lines[1].rsplit(" ", 1)[0]  # one label too few
    labels.write_text("\n".join(lines) + "\n")
    assert len(read_split(tmp_path, "dev")[0]) == 0
    utterances, skips = read_split(tmp_path, "dev", frame_tolerance=1)
    assert len(skips) == 0
    assert [len(u.phones) for u in utterances] == [num_frames(u.num_samples) for u in utterances]
    assert utterances[1].phones[-1] == utterances[1].phones[-2]


def test_missing_split_or_labels_raise_naming_the_argument(tmp_path):
    write_two_speaker_corpus(tmp_path)
    with pytest.raises(FileNotFoundError, match="split 'test'"):
        read_split(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="labels"):
        read_split(tmp_path, "dev", labels=tmp_path / "nowhere.txt")


TEXTGRID = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 0.5
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 0.5
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = 0.5
            text = "say ""hi"""
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 0.5
        intervals: size = 4
        intervals [1]:
            xmin = 0
            xmax = 0.1
            text = ""
        intervals [2]:
            xmin = 0.1
            xmax = 0.23
            text = "S"
        intervals [3]:
            xmin = 0.23
            xmax = 0.4
            text = "EY1"
        intervals [4]:
            xmin = 0.4
            xmax = 0.5
            text = "HH"
'''


def test_textgrid_parser_reads_interval_tiers(tmp_path):
    path = tmp_path / "x.TextGrid"
    path.write_text(TEXTGRID)
    tiers = read_textgrid(path)
    assert list(tiers) == ["words", "phones"]
    assert tiers["words"][0].text == 'say "hi"'
    assert [(i.start, i.end, i.text) for i in tiers["phones"]][1] == (0.1, 0.23, "S")


def test_textgrid_labels_on_the_frame_grid_and_mismatches_skipped(tmp_path):
    write_tone(tmp_path / "dev" / "7" / "3" / "7-3-0000.wav", 8000, 200.0)  # 0.5 s, 51 frames
    write_tone(tmp_path / "dev" / "7" / "3" / "7-3-0001.wav", 9600, 200.0)  # 0.6 s: too long
    aligned = tmp_path / "phones" / "dev" / "7"
    aligned.mkdir(parents=True)
    for utterance_id in ["7-3-0000", "7-3-0001"]:
        (aligned / f"{utterance_id}.TextGrid").write_text(TEXTGRID)
    utterances, skips = read_split(tmp_path, "dev")
    assert [u.id for u in utterances] == ["7-3-0000"]
    assert len(skips) == 1 and "ends at 0.500 s but the audio lasts 0.600 s" in skips.entries[0].reason
    phones = utterances[0].phones
    # Frame i is centred at 10 i ms: frames 0-9 silence, 10-22 S, 23-39 EY1, 40-50 HH.
    assert phones == (SILENCE,) * 10 + ("S",) * 13 + ("EY1",) * 17 + ("HH",) * 11
