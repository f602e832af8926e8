"""Files on disk: atomic writes, images, hashes, trajectory shards and provenance (no model, no MLflow, no DVC)."""
