"""Evaluation: caption metrics (pycocoevalcap) and reports."""
