"""Tests of the tiny_llama example (examples/tiny_llama)."""
