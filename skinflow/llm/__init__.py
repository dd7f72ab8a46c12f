"""Steps that call a language model behind an OpenAI-compatible API: captions for Stage I, the LLM judge."""
