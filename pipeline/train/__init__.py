"""Training: the loop (``loop``), batches that make resume exact (``data``)."""
