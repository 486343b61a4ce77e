"""The data-efficiency study: many target problems adapted in batches from each initialisation,
paired comparisons with crossed seeds x problems CIs (``python -m metaft.study``)."""
