"""Bring a model people already have into MLC's format: GGUF (llama.cpp's files) to an MLC model
directory (weights, ``mlc-chat-config.json``, tokenizer). Never imports the runtime or tvm."""
