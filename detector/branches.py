"""The scoring branches of FineGrainedAD (``model.FineGrainedAD.score_features``), named once.

Here, not in ``model.py``, so that the CLI lists them without importing torch.
"""
BRANCHES = ("fused", "text", "visual")  # fused: the method; text (PAD) and visual (VAD) alone: ablations
DEFAULT_BRANCH = BRANCHES[0]
