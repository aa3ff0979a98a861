"""Metrics, figures, tables and the claims check; everything here reads results/metrics/*."""
