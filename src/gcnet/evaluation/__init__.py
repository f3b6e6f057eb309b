"""Evaluation: metrics and inference."""
