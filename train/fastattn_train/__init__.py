"""Thin training package for fastattn: speech data, features, pre-training and probes.

Submodules are imported explicitly (``fastattn_train.corpus``, ``fastattn_train.features``,
``fastattn_train.dataset``, ...); nothing is imported here so that each stays cheap to load.
"""
