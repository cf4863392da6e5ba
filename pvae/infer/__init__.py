"""Inference for any Pyro model/guide pair whose per-datapoint sites sit in a "data" plate.

Training (:func:`pvae.infer.train.fit`), objectives, per-datapoint log-weights, held-out
bounds (:func:`pvae.infer.iwae.log_likelihood`), checkpoints' file format, devices and
processes. It knows no particular model: it imports torch, Pyro and :mod:`pvae.errors` only.
"""
