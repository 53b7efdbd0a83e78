"""The serving dashboard: one self-contained HTML page (inline CSS and JS, no CDN)."""
