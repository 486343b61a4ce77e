"""The data-efficiency study: many target problems adapted in batches from each initialisation,
paired comparisons with hierarchical-bootstrap CIs (``python -m metaft.study``)."""
