"""The gate: checks of a training file from its footer, and the profile it is judged by."""
