"""What a model is. Importing this package registers the models trained here with transformers'
Auto classes (paper A's GPT-2 variants ``ma_gpt2``, paper C's 2-layer transformers ``birth``), so
their checkpoints load like any model."""

from pipeline.models import birth as _birth  # noqa: F401
from pipeline.models import ma_gpt2 as _ma_gpt2  # noqa: F401
