"""The pipeline's schema migrations (Alembic), applied by ``pipeline.store.install``."""
