"""The embedded default model: a small Llama with random weights in MLC LLM's format.

It ships in the package because ``numaplan bench`` (and ``make demo``) plan, compile and run it
on the machine at hand, with no download. It is an ordinary MLC model directory
(:func:`numaplan.tiny_llama.build.build_model_dir`), built and run by numaplan's own model
definition (:mod:`numaplan.nn`) exactly as a converted real model is.
"""
