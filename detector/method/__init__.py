"""The paper's computations, torch only: the backbone with its V-V branch, the caption text encoder, the
multi-level prompts (MLLP), the region aggregation and losses (MLSA), the model's maps and scores, and the fit.

Nothing here imports from ``detector.eval``, ``store``, ``run`` or ``deploy`` (tests/test_layers.py): the
method takes typed inputs (a ``TrainConfig``, tensors, a caption record) and knows no files or consoles.
"""
