"""Matching, MERGE and every loss term: pure functions of arrays, used inside the jitted step."""
