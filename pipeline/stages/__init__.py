"""Pipeline stages: one module each, one public ``run(ctx, **kwargs) -> dict``."""
