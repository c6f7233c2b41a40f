"""The language models the LLM explainers and simulators (llm.py) ask: an OpenAI-compatible HTTP endpoint
(endpoint.py, with its response cache, cache.py) and a local transformers model (local.py)."""
