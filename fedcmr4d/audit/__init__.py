"""The memorization audit: representations, distances, calibration, membership inference, report."""
