"""One leaf module per stage; importing this package registers them all (``core.registry``)."""

from pipeline.stages import (  # noqa: F401
    ma_attention,
    ma_intervene,
    ma_profile,
    sw_ablate,
    sw_actquant,
    sw_detect,
    sw_scale,
    sw_stopwords,
    sw_weightquant,
    train_lm,
)
