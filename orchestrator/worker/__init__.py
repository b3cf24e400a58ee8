"""The SGLang backend worker: `python -m orchestrator.worker <SGLang args> <our args>`."""
