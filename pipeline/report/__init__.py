"""The report of every artefact (``make report``) built from committed CSVs only."""
