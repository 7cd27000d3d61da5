"""Every reversible edit of a model, in one room.

The contract: every intervention is a context manager that edits the model only through the
temporary hooks of :mod:`pipeline.hooks.forward` (``patch``, ``patch_seeing_inputs``) or through
reversible weight edits, and on exit (also on an exception) leaves the model bit-identical to
before; ``evaluation.conditions.evaluate_conditions`` checks this after every condition, and the
tests compare whole state dicts and logits. A stage runs an intervention as one named condition
and never defines one itself.

Modules:

- ``sites``: activation edits at token roles (paper A §3 set-to-zero / set-to-mean, the random
  control, §5 ViT register / Fix-Reg-Mean edits): ``Site``, ``set_sites``, ``random_control``,
  ``editable_roles``.
- ``weights``: reversible weight edits (paper B: prune / scale the super weights, prune the
  largest other weights): ``set_entries``, ``scale_weights``, ``largest_weights`` (the pick),
  ``zero_weights``.
- ``restore``: the super activation written back under pruned super weights (paper B Table 1):
  ``restore_super_activation``, ``prune_restore``.
- ``quant``: simulated quantization (paper B §5): the building blocks ``quantized_weights``,
  ``quantized_inputs``, ``quantized_attention``; whole-model W8A8 ``w8a8`` (with
  ``quantized_modules``, ``outlier_channels``) and INT-N blockwise RTN ``quantized_model``.
- ``smoothquant``: SmoothQuant (Xiao et al. 2023) folded into the weights, paper B's baseline:
  ``smoothing_factors`` (from ``input_absmax`` calibration), ``smoothed``, ``NotApplicable``.

Not here: where weights are (``pipeline.models.matrices``: ``WeightSite``, ``decoder_matrices``),
hook mechanics (``pipeline.hooks``: capture / patch, token roles, MoE recomputation, the input
rows of every matrix), and measurements (``pipeline.analysis``: detectors, profiles, probes).
"""
