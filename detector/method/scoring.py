"""How a trained detector is scored, named once: the branches (``model.FineGrainedAD.score_features``) and
the evaluation and map resolutions.

Here, not in ``model.py`` or ``evaluate.py``, so that the CLI shows them as choices and defaults without
importing torch or numpy.
"""
BRANCHES = ("fused", "text", "visual")  # fused: the method; text (PAD) and visual (VAD) alone: ablations
DEFAULT_BRANCH = BRANCHES[0]
EVAL_RESOLUTION = 400  # the paper's maps and metrics are at 400 x 400 (its --resolution default)
MAP_RESOLUTION = 256  # a map's size when nothing names one (no stored threshold, no export): predict, the API, the model
