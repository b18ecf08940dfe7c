"""Core components: pure functions and records of distillation (no Celery, no CLI)."""
