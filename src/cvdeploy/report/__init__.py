"""Reports: a self-contained HTML page generated from what the bundle recorded."""
