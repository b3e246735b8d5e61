"""Conversion paths as adapters: a source BatchNorm built from the Case, converted by a real
converter, and the converted artifact run through the whole step plan in its target runtime.

Each path declares the *source* layer's profile: a faithful conversion preserves it, so every
divergence is a finding about the converter (or the target runtime), attributed to knobs by the
engine like any other. Besides the step results, each path reports in ``Result.conversion`` (a
:class:`bnspec.adapter.ConversionChecks`, filled by ``_common.conversion_checks``) what it read back
from the artifact and what it checked about the conversion itself:

- ``converted``: the hyperparameters read back from the artifact (eps, canonical momentum,
  training mode, whether it holds running statistics and affine parameters);
- ``hyperparameters_preserved``, ``state_preserved``: eps/momentum and the initial running
  statistics equal the source's;
- ``source_untouched``: the source's parameters, running statistics and mode are bit-identical
  before and after the conversion (``source_changes`` names what changed);
- ``trainable_source`` / ``trainable_converted`` / ``trainable_match``: the trainable parameters
  (name -> element count) on each side, and whether their counts agree.

What else a path observed (versions, exporters, a converter's own error) stays in ``Result.meta``.

Paths whose converter pins fight the main environment run in their own interpreter,
``<root>/<family>/.venv`` (``bnspec envs create <family>``; bnspec.envs.envs_root() is the root);
``installed()`` is False until it exists.
"""
