"""Data shipped with edgelin: calibration.txt, the first 48,947 characters of tinyshakespeare
(public domain; taken from the first 90% of the file, so the last 10% stays free for evaluation)."""
