"""tunesmith: data-aware, trustworthy, efficient instruction tuning."""

__version__ = "0.1.0"
