"""The Streamyfin optimize-server face, at the root of the main port."""
