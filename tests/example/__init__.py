"""Tests of the tiny_llama example (numaplan.tiny_llama and examples/tiny_llama)."""
