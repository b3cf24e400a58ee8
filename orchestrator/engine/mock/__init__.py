"""The mock engine: a CPU simulator of an SGLang engine (KV cache, scheduler, timing, metrics)."""
