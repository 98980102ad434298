"""tgloc: localize anomalies in industrial IoT data as abnormal sub-temporal-graphs.

`core` is importable without Streamlit: the command line and the dashboard are two thin
front ends over the same calls.
"""

__version__ = "0.1.0"
