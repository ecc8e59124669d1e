"""Test machinery shared by the suites (not tests themselves)."""
