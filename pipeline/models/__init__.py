"""What a model is. Importing this package registers paper A's GPT-2 variants (``ma_gpt2``) with
transformers' Auto classes, so their checkpoints load like any model."""

from pipeline.models import ma_gpt2 as _ma_gpt2  # noqa: F401
