"""Speech corpora: LibriSpeech-layout readers, frame phone labels, and a synthetic corpus builder.

- ``records``: the utterance record and the skipped-data report every reader returns.
- ``frames``: the 10 ms frame grid shared by labels and features.
- ``librispeech``: reads ``<root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac|.wav``.
- ``s3prl_labels``, ``textgrid``: per-frame phone label files and Montreal Forced Aligner TextGrids.
- ``build``: synthesises a labelled LibriSpeech-layout corpus with eSpeak NG (``espeak``,
  ``voices``, ``sentences``).
"""
