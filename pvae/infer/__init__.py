"""Inference for any Pyro model/guide pair whose per-datapoint sites sit in a "data" plate.

Estimators (objectives, per-datapoint log-weights, :func:`pvae.infer.iwae.log_likelihood`,
:func:`pvae.infer.evaluate.estimate_elbo`, :mod:`pvae.infer.ais`, all behind one front-end,
:mod:`pvae.infer.evaluation`), training (:func:`pvae.infer.train.fit` and its parts:
:mod:`pvae.infer.run_setup`, :mod:`pvae.infer.training_sources`,
:mod:`pvae.infer.training_streams`, :mod:`pvae.infer.training_state`), checkpoints' file
format, devices and processes.
Estimators never import training (a lint-imports contract). It knows no particular model:
it imports torch, Pyro and :mod:`pvae.errors` only.
"""
