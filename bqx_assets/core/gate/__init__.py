"""The gate: what it accepts (thresholds), its checks of a training file from the footer, and
the profile a file is judged by."""
