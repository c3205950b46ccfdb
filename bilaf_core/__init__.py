"""BiLAF Studio engine: features in, selections out — importable without Streamlit."""

__version__ = "0.1.0"
